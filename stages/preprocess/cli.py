"""``python -m stages preprocess``: preprocess a raw dataset's training cases for one configuration.

Reads the raw dataset (local folder or ``s3://`` prefix) and a plans JSON, writes
``<output>/<data_identifier>_stage<i>/`` (``<case>.npy``, ``<case>_seg.npy``, ``<case>.json``) and
``<output>/gt_segmentations/``. With ``--shard I/N`` only every N-th case (sorted ids, starting at I) is
processed, so N pods can share the work. Outputs are produced in a scratch folder and uploaded; each shard
writes its own completion marker (``_NNKUBE_COMPLETE.preprocess.<stage folder>.shard-I-of-N.json``), so a
rerun skips the shards whose cases, plans and parameters are unchanged.
"""

from __future__ import annotations

import json
import logging
from enum import Enum
from pathlib import Path

import typer

from stages import storage
from stages.dataset.layout import IMAGES_TR, LABELS_TR
from stages.dataset.models import DATASET_JSON, load_dataset_json, parse_dataset_json
from stages.errors import BadInputError
from stages.imageio import strip_image_suffix
from stages.log import bind_context
from stages.plan.models import Plans
from stages.preprocess.models import CaseProperties
from stages.preprocess.preprocessor import preprocess_dataset
from stages.resources import default_workers
from stages.stagekit import WriteGuard, marker_uri, protected_prefixes, run_stage, scratch_dir
from stages.stagekit.options import raw_prefix_option, result_json_option
from stages.storage.transfer import run_parallel

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, help=__doc__)


class Configuration(str, Enum):
    """Configurations with their own preprocessed data (3d_cascade_fullres uses 3d_fullres's)."""

    two_d = "2d"
    fullres = "3d_fullres"
    lowres = "3d_lowres"


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; None -> ``(0, 1)``."""
    if not text:
        return 0, 1
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise BadInputError(f"--shard {text!r}: expected I/N, e.g. 0/4") from exc
    if count < 1 or not 0 <= index < count:
        raise BadInputError(f"--shard {text!r}: need 0 <= I < N")
    return index, count


def _shard_files(uri: str, shard: tuple[int, int]) -> tuple[list[str], list[str]]:
    """This shard's case ids (sorted, every N-th from I) and the URIs of their image and label files."""
    if storage.is_s3(uri):
        source = storage.join(uri, DATASET_JSON)
        raw = storage.read_bytes(source)
        try:
            dataset = parse_dataset_json(json.loads(raw), source=source)
        except ValueError as exc:  # JSONDecodeError or UnicodeDecodeError
            raise BadInputError(f"{source}: not valid JSON ({exc})") from exc
    else:
        dataset = load_dataset_json(Path(storage.to_local_path(uri)))
    ids = sorted(dataset.case_ids())[shard[0]:: shard[1]]
    wanted = set(ids)
    files = []
    for folder in (IMAGES_TR, LABELS_TR):
        for src in storage.list_prefix(storage.join(uri, folder), recursive=False):
            stem = strip_image_suffix(storage.basename(src))
            if stem in wanted or (stem[-5:-4] == "_" and stem[:-5] in wanted):
                files.append(src)
    return ids, files


def _download_files(uri: str, files: list[str], task_dir: Path) -> None:
    """Download ``dataset.json`` and ``files`` (URIs below ``uri``) into ``task_dir`` keeping relative paths."""
    pairs = [(storage.join(uri, DATASET_JSON), task_dir / DATASET_JSON)]
    pairs += [(src, task_dir / src[len(uri.rstrip("/")) + 1:]) for src in files]
    run_parallel([lambda s=s, d=d: storage.download_file(s, d) for s, d in pairs], 8, None, "download dataset")


def record_source_uris(stage_dir: Path, local_task: Path, dataset: str) -> None:
    """Make the case properties name the raw files by their URIs below ``dataset``, not by the scratch copy read.

    Otherwise every run on S3 would record another temporary folder, and a shard's outputs would differ from
    one run to the next although nothing changed.
    """
    def to_uri(path: str | None) -> str | None:
        if path is None or not Path(path).is_relative_to(local_task):
            return path
        return storage.join(dataset, Path(path).relative_to(local_task).as_posix())

    for path in sorted(stage_dir.glob("*.json")):
        props = CaseProperties.load(path)
        props.list_of_data_files = [to_uri(f) for f in props.list_of_data_files]
        props.seg_file = to_uri(props.seg_file)
        props.save(path)


@app.command()
def main(
    dataset: str = typer.Option(..., "--dataset", help="Raw dataset: local folder or s3:// prefix holding "
                                "dataset.json, imagesTr/ and labelsTr/."),
    plans: str = typer.Option(..., "--plans", help="URI of the plans JSON (nnUNetPlansv2.1_plans_3D.json or "
                              "_2D.json) written by the plan step."),
    configuration: Configuration = typer.Option(..., "--configuration", help="Which configuration's data to "
                                                "make (2d needs the 2D plans, the 3d ones the 3D plans)."),
    output: str = typer.Option(..., "--output", help="The task's preprocessed folder (local path or s3:// "
                               "prefix); the stage folder and gt_segmentations/ are written below it."),
    num_processes: int = typer.Option(0, "--num-processes", help="Worker processes (0: the CPUs available, "
                                      "at most 8, or nnUNet_def_n_proc when set). Memory grows with it."),
    shard: str = typer.Option(None, "--shard", help="I/N: process only the cases with index I modulo N in "
                              "sorted order (default: all). Each shard has its own completion marker."),
    result_json: str | None = result_json_option(),
    raw_prefix: str | None = raw_prefix_option(),
) -> None:
    """Crop, transpose, resample and normalize the training cases for one configuration (spec §4)."""
    bind_context(stage="preprocess", configuration=configuration.value, dataset=storage.basename(dataset))
    shard_spec = parse_shard(shard)
    the_plans = Plans.from_json(storage.read_text(plans), source=plans)
    stage = the_plans.stage_for(configuration.value)
    folder = the_plans.stage_folder(stage)
    workers = num_processes if num_processes > 0 else default_workers("nnUNet_def_n_proc", cap=8)
    ids, files = _shard_files(dataset, shard_spec)

    def compute(out_dir: Path) -> dict:
        with scratch_dir("preprocess-input") as scratch:
            task_dir = Path(storage.to_local_path(dataset)) if not storage.is_s3(dataset) else scratch / "dataset"
            if storage.is_s3(dataset):
                _download_files(dataset, files, task_dir)
            done = preprocess_dataset(task_dir, the_plans, [stage], out_dir, workers, case_ids=ids)
            if storage.is_s3(dataset):
                record_source_uris(out_dir / folder, task_dir, dataset)
        return {
            "configuration": configuration.value,
            "stage": stage,
            "stage_folder": storage.join(output, folder),
            "gt_segmentations": storage.join(output, "gt_segmentations"),
            "shard": f"{shard_spec[0]}/{shard_spec[1]}",
            "num_cases": len(done),
            "case_ids": done,
        }

    result = run_stage(
        "preprocess", {"configuration": configuration.value, "stage": stage, "case_ids": ids},
        [storage.join(dataset, DATASET_JSON), plans, *files], output, compute, result_json,
        marker=marker_uri(output, f"preprocess.{folder}.shard-{shard_spec[0]}-of-{shard_spec[1]}"),
        guard=WriteGuard(protected_prefixes(raw_prefix, [dataset])), prune_stale=True,
    )
    typer.echo(f"preprocessed {result.extra['num_cases']} case(s) for {configuration.value} into "
               f"{storage.join(output, folder)} ({result.status} in {result.seconds:.1f} s)")
