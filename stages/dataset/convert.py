"""Conversion of a Medical Segmentation Decathlon task into the nnU-Net v1 raw layout.

``TaskXX_Name/imagesTr/<case>.nii.gz`` (one 4D file with all modalities, or a 3D file) becomes
``TaskXXX_Name/imagesTr/<case>_XXXX.nii.gz`` (one 3D file per modality). A 4D image is split along its 4th axis;
each part keeps the spacing, origin and direction of the first three axes. A 3D image is copied byte for byte
as ``_0000``, so its voxels and geometry cannot change. ``labelsTr`` and ``dataset.json`` are copied verbatim
(the MSD float32 label files included).

The output is written into a hidden sibling folder and renamed into place at the end, so a failed or killed
conversion never leaves a half-written task behind. An existing target with the same content is accepted
(re-running a conversion is a no-op); a different one is replaced only when asked.
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import SimpleITK as sitk
from tqdm import tqdm

from stages.documents import Document
from stages.errors import BadInputError, DatasetError
from stages.imageio import Geometry, image_suffix, read_sitk, strip_image_suffix, write_image
from stages.resources import default_workers

from .layout import (
    IMAGES_TR,
    IMAGES_TS,
    LABELS_TR,
    list_image_files,
    modality_file_name,
    split_image_file_name,
    visible_entries,
)
from .models import DATASET_JSON, TaskName, load_dataset_json

log = logging.getLogger(__name__)

RAW_DATA_FOLDER = "nnUNet_raw_data"


class ConversionResult(Document):
    """What a conversion produced (written by the stage CLI for the workflow).

    Attributes:
        task: Task folder name, e.g. ``Task004_Hippocampus``.
        output: Local path or URI of the converted task folder.
        num_training: Number of training cases in the converted ``dataset.json``.
        num_test: Number of test cases in the converted ``dataset.json``.
        num_modalities: Number of modalities.
    """

    KIND = "conversion_result"
    SCHEMA_VERSION = 1

    task: str
    output: str
    num_training: int
    num_test: int
    num_modalities: int


def target_task_name(msd_dir: str | os.PathLike, output_task_id: int | None = None) -> TaskName:
    """Task name of the converted folder: ``Task04_Hippocampus`` -> ``Task004_Hippocampus`` (or the given id)."""
    task = TaskName.parse(Path(os.path.abspath(msd_dir)).name)
    return task if output_task_id is None else task.with_id(output_task_id)


def convert_msd_task(
    msd_dir: str | os.PathLike,
    raw_data_base: str | os.PathLike,
    output_task_id: int | None = None,
    num_processes: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Convert an MSD task into ``<raw_data_base>/nnUNet_raw_data/TaskXXX_NAME``.

    Args:
        msd_dir: The MSD task folder (``TaskXX_Name`` with ``dataset.json``, ``imagesTr``, ``labelsTr``,
            optionally ``imagesTs``).
        raw_data_base: The ``nnUNet_raw_data_base`` folder.
        output_task_id: Id of the converted task (default: the MSD id).
        num_processes: Parallel workers (default: available CPUs, at most 8, or ``nnUNet_def_n_proc``).
        overwrite: Replace an existing target whose content differs.
        progress: Show a progress bar on a terminal.

    Returns:
        The converted task folder.

    Raises:
        DatasetError: The MSD folder is malformed or an image cannot be converted (every failed file named).
        BadInputError: The target exists with other content and ``overwrite`` is False.
    """
    return convert_msd_task_to(
        msd_dir, Path(raw_data_base) / RAW_DATA_FOLDER, output_task_id, num_processes, overwrite, progress
    )


def convert_msd_task_to(
    msd_dir: str | os.PathLike,
    output_parent: str | os.PathLike,
    output_task_id: int | None = None,
    num_processes: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Like :func:`convert_msd_task`, but the task folder is created directly under ``output_parent``."""
    msd_dir = Path(msd_dir)
    task = target_task_name(msd_dir, output_task_id)
    _check_msd_folder(msd_dir)
    output_parent = Path(output_parent)
    output_parent.mkdir(parents=True, exist_ok=True)
    target = output_parent / task.format()
    staging = output_parent / f".{task.format()}.tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir()  # not mkdtemp: the task folder gets the umask's permissions, not 0700
    try:
        jobs = _plan_jobs(msd_dir, staging)
        shutil.copyfile(msd_dir / DATASET_JSON, staging / DATASET_JSON)
        _run_jobs(jobs, num_processes, progress)
        _publish(staging, target, msd_dir, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("converted %s -> %s", msd_dir, target)
    return target


def conversion_result(task_dir: str | os.PathLike, output: str | None = None) -> ConversionResult:
    """Summarize a converted task folder (``output`` is the URI to report; default the folder itself)."""
    task_dir = Path(task_dir)
    dj = load_dataset_json(task_dir)
    return ConversionResult(
        task=task_dir.name,
        output=output or str(task_dir),
        num_training=len(dj.training),
        num_test=len(dj.test),
        num_modalities=dj.num_modalities,
    )


def _check_msd_folder(msd_dir: Path) -> None:
    problems = []
    if not msd_dir.is_dir():
        raise DatasetError(f"{msd_dir}: MSD task folder not found")
    for sub in (IMAGES_TR, LABELS_TR):
        if not (msd_dir / sub).is_dir():
            problems.append(f"{msd_dir / sub}: folder missing")
    if problems:
        raise DatasetError("; ".join(problems))
    cases = set(load_dataset_json(msd_dir).case_ids())  # a DatasetError names the file if missing or invalid
    for name in list_image_files(msd_dir / IMAGES_TR):
        parsed = split_image_file_name(name)
        if parsed and parsed[0] in cases and strip_image_suffix(name) not in cases:
            raise DatasetError(
                f"{msd_dir / IMAGES_TR / name}: already named in the nnU-Net layout (<case>_XXXX); "
                f"{msd_dir} looks converted already"
            )


# A job converts one source file: ("split", src, destination folder) or ("copy", src, destination file).
_Job = tuple[str, Path, Path]


def _plan_jobs(msd_dir: Path, staging: Path) -> list[_Job]:
    jobs: list[_Job] = []
    for sub in (IMAGES_TR, IMAGES_TS):
        if not (msd_dir / sub).is_dir():
            continue
        (staging / sub).mkdir()
        for name in list_image_files(msd_dir / sub):
            jobs.append(("split", msd_dir / sub / name, staging / sub))
        _warn_skipped(msd_dir / sub)
    (staging / LABELS_TR).mkdir()
    for name in list_image_files(msd_dir / LABELS_TR):
        jobs.append(("copy", msd_dir / LABELS_TR / name, staging / LABELS_TR / name))
    _warn_skipped(msd_dir / LABELS_TR)
    return jobs


def _warn_skipped(folder: Path) -> None:
    skipped = sorted(set(visible_entries(folder)) - set(list_image_files(folder)))
    if skipped:
        log.warning("%s: not images, not converted: %s", folder, ", ".join(skipped))


def _run_jobs(jobs: list[_Job], num_processes: int | None, progress: bool) -> None:
    """Run every job in a bounded thread pool.

    Unreadable or malformed inputs are collected and raised together as one :class:`DatasetError`; any other
    error (a full disk, a bug) cancels the remaining jobs and propagates unchanged.
    """
    workers = max(1, num_processes or default_workers("nnUNet_def_n_proc", cap=8))
    failures: list[str] = []
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {pool.submit(_run_job, *job): job[1] for job in jobs}
        with tqdm(total=len(jobs), desc="convert", unit="file", disable=None if progress else True) as bar:
            for future in as_completed(futures):
                exc = future.exception()
                if isinstance(exc, BadInputError):
                    src = str(futures[future])
                    failures.append(str(exc) if str(exc).startswith(src) else f"{src}: {exc}")
                elif exc is not None:
                    raise exc
                bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if failures:
        raise DatasetError(f"conversion failed for {len(failures)} file(s): " + "; ".join(sorted(failures)))


def _run_job(kind: str, src: Path, dst: Path) -> None:
    if kind == "copy":
        shutil.copyfile(src, dst)  # copyfile, not copy2: the result must be writable even if the source is not
    else:
        split_image(src, dst)


def split_image(src: str | os.PathLike, dst_dir: str | os.PathLike) -> list[Path]:
    """Write one 3D file per modality of ``src`` into ``dst_dir`` as ``<case>_XXXX<suffix>``.

    A 3D scalar image is copied byte for byte as ``_0000``; a 4D image is split along its 4th axis and a 3D
    image with vector voxels along its components, each part keeping the 3D spacing, origin and direction.

    Args:
        src: The MSD image.
        dst_dir: Destination folder.

    Returns:
        The files written, in modality order.

    Raises:
        DatasetError: The image is unreadable or neither 3D nor 4D.
    """
    src, dst_dir = Path(src), Path(dst_dir)
    suffix = image_suffix(src.name)
    case_id = strip_image_suffix(src.name)
    image = read_sitk(src)
    dim, components = image.GetDimension(), image.GetNumberOfComponentsPerPixel()
    if dim == 3 and components == 1:
        out = dst_dir / modality_file_name(case_id, 0, suffix)
        shutil.copyfile(src, out)
        return [out]
    array = sitk.GetArrayFromImage(image)
    if dim == 4 and components == 1:
        geometry = _first_three_axes(Geometry.of(image))
        parts = [array[t] for t in range(array.shape[0])]  # array axes (t, z, y, x)
    elif dim == 3:
        geometry = Geometry.of(image)
        parts = [array[..., c] for c in range(components)]  # array axes (z, y, x, c)
    else:
        raise DatasetError(f"{src}: expected a 3D or 4D image, found {dim}D with {components} component(s)")
    outputs = []
    for modality, part in enumerate(parts):
        out = dst_dir / modality_file_name(case_id, modality, suffix)
        write_image(part, geometry, out)
        outputs.append(out)
    return outputs


def _first_three_axes(geometry: Geometry) -> Geometry:
    """Geometry of the first three axes of a 4D geometry (the 4th row/column of the direction dropped)."""
    d = geometry.direction
    return Geometry(
        spacing=geometry.spacing[:3],
        origin=geometry.origin[:3],
        direction=tuple(d[0:3]) + tuple(d[4:7]) + tuple(d[8:11]),
        size=geometry.size[:3],
    )


def _publish(staging: Path, target: Path, msd_dir: Path, overwrite: bool) -> None:
    """Rename ``staging`` to ``target``; accept an identical target, replace a different one only if asked."""
    if target.exists():
        if trees_identical(staging, target):
            log.info("%s already holds this conversion; left unchanged", target)
            return
        if not overwrite:
            raise BadInputError(
                f"{target}: already exists and differs from the conversion of {msd_dir}; "
                "remove it or ask to overwrite it (--overwrite)"
            )
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
        log.warning("%s: replaced the previous, different content", target)
        return
    os.rename(staging, target)


def trees_identical(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True if two folders hold the same relative file names with the same bytes (hidden files ignored)."""
    files_a, files_b = _relative_files(Path(a)), _relative_files(Path(b))
    if files_a != files_b:
        return False
    for rel in files_a:
        pa, pb = Path(a) / rel, Path(b) / rel
        if pa.stat().st_size != pb.stat().st_size or not filecmp.cmp(pa, pb, shallow=False):
            return False
    return True


def _relative_files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)
