"""Dataset steps on URIs: stage an ``s3://`` prefix into a scratch folder, run the local function, publish.

The library functions (:func:`~stages.dataset.verify.verify_dataset`,
:func:`~stages.dataset.convert.convert_msd_task_to`) work on local folders only; the stage CLIs and ``nnkube
dataset`` call these wrappers so that a local folder and an S3 prefix behave alike.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path

from stages import storage
from stages.errors import BadInputError
from stages.stagekit.run import MARKER_GLOB

from .convert import ConversionResult, conversion_result, convert_msd_task_to, target_task_name, trees_identical
from .models import DATASET_JSON
from .verify import VerificationReport, verify_dataset

log = logging.getLogger(__name__)


def local_folder(uri: str) -> AbstractContextManager[Path]:
    """A local folder holding the content of ``uri``.

    A local path (or ``file://`` URI) is used in place; an ``s3://`` prefix is downloaded into a temporary
    folder named like the prefix's last component, which is removed on exit (:func:`stages.storage.local_copy`).
    """
    return storage.local_copy(uri, storage.download_tree, prefix="nnkube-dataset-")


def verify_uri(uri: str, workers: int | None = None) -> VerificationReport:
    """Verify the dataset at a local path or ``s3://`` prefix (see :func:`verify_dataset`)."""
    with local_folder(uri) as folder:
        return verify_dataset(folder, workers=workers, source=uri)


def convert_uri(
    input_uri: str,
    output_uri: str,
    task_id: int | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> ConversionResult:
    """Convert the MSD task at ``input_uri`` into ``<output_uri>/TaskXXX_NAME`` (local folders or S3 prefixes).

    Args:
        input_uri: MSD task folder or prefix; its last component must be ``TaskXX_Name``.
        output_uri: Folder or prefix receiving the task folder (e.g. ``$nnUNet_raw_data_base/nnUNet_raw_data``).
        task_id: Id of the converted task (default: the MSD id).
        workers: Parallel workers.
        overwrite: Replace an existing, different target.
        progress: Show a progress bar on a terminal.

    Returns:
        What was written, with the URI of the task folder.
    """
    target_task_name(storage.basename(input_uri), task_id)  # fail on a bad name before downloading anything
    with local_folder(input_uri) as msd:
        if not storage.is_s3(output_uri):
            out = convert_msd_task_to(msd, storage.to_local_path(output_uri), task_id, workers, overwrite, progress)
            return conversion_result(out)
        with tempfile.TemporaryDirectory(prefix="nnkube-convert-") as scratch:
            out = convert_msd_task_to(msd, scratch, task_id, workers, overwrite=True, progress=progress)
            dest = storage.join(output_uri, out.name)
            result = conversion_result(out, output=dest)
            publish_tree(out, dest, overwrite)
            return result


def publish_tree(local_task: Path, dest: str, overwrite: bool) -> None:
    """Upload a finished task folder to ``dest``, ``dataset.json`` last so that readers never see a partial task.

    An identical existing prefix is left alone; a different one is replaced only when ``overwrite`` is True.

    Raises:
        BadInputError: ``dest`` holds other content and ``overwrite`` is False.
    """
    if storage.list_prefix(dest):
        with tempfile.TemporaryDirectory(prefix="nnkube-compare-") as scratch:
            storage.download_tree(dest, scratch)
            for marker in Path(scratch).glob(MARKER_GLOB):  # a stage's completion marker is not task content
                marker.unlink()
            if trees_identical(local_task, scratch):
                log.info("%s already holds this conversion; left unchanged", dest)
                return
        if not overwrite:
            raise BadInputError(f"{dest}: already exists and differs from this conversion; ask to overwrite it")
        removed = storage.delete_prefix(dest)
        log.warning("%s: removed %d objects of the previous, different content", dest, removed)
    with tempfile.TemporaryDirectory(prefix="nnkube-marker-") as marker:
        shutil.move(str(local_task / DATASET_JSON), Path(marker) / DATASET_JSON)
        storage.upload_tree(local_task, dest)
        storage.upload_tree(marker, dest)
        shutil.move(str(Path(marker) / DATASET_JSON), local_task / DATASET_JSON)
