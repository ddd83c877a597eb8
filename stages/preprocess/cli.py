"""``python -m stages preprocess``: preprocess a raw dataset's training cases for one configuration.

Reads the raw dataset (local folder or ``s3://`` prefix) and a plans JSON, writes
``<output>/<data_identifier>_stage<i>/`` (``<case>.npy``, ``<case>_seg.npy``, ``<case>.json``) and
``<output>/gt_segmentations/``. With ``--shard I/N`` only every N-th case (sorted ids, starting at I) is
processed, so N pods can share the work. Local outputs are written in place (cases already complete are
skipped); S3 outputs are produced in a scratch folder and uploaded.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from enum import Enum
from pathlib import Path

import typer

from stages import storage
from stages.dataset.layout import IMAGES_TR, LABELS_TR
from stages.dataset.models import DATASET_JSON, load_dataset_json, parse_dataset_json
from stages.documents import write_json_atomic
from stages.errors import BadInputError
from stages.imageio import strip_image_suffix
from stages.log import bind_context
from stages.plan.models import Plans
from stages.preprocess.preprocessor import preprocess_dataset
from stages.resources import default_workers
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


def _stage_dataset(uri: str, shard: tuple[int, int], scratch: Path) -> tuple[Path, list[str]]:
    """Local dataset folder and this shard's case ids; from S3 only this shard's files are downloaded."""
    if not storage.is_s3(uri):
        task_dir = Path(storage.to_local_path(uri))
        return task_dir, sorted(load_dataset_json(task_dir).case_ids())[shard[0]:: shard[1]]
    raw = storage.read_bytes(storage.join(uri, DATASET_JSON))
    try:
        dataset = parse_dataset_json(json.loads(raw), source=storage.join(uri, DATASET_JSON))
    except ValueError as exc:  # JSONDecodeError or UnicodeDecodeError
        raise BadInputError(f"{storage.join(uri, DATASET_JSON)}: not valid JSON ({exc})") from exc
    task_dir = scratch / "dataset"
    task_dir.mkdir(parents=True)
    (task_dir / DATASET_JSON).write_bytes(raw)
    ids = sorted(dataset.case_ids())[shard[0]:: shard[1]]
    wanted = set(ids)
    pairs = []
    for folder in (IMAGES_TR, LABELS_TR):
        for src in storage.list_prefix(storage.join(uri, folder)):
            name = storage.basename(src)
            stem = strip_image_suffix(name)
            if stem in wanted or (stem[-5:-4] == "_" and stem[:-5] in wanted):
                pairs.append((src, str(task_dir / folder / name)))
    run_parallel([lambda s=s, d=d: storage.download_file(s, d) for s, d in pairs], 8, None, "download dataset")
    return task_dir, ids


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
                              "sorted order (default: all)."),
    result_json: str = typer.Option(None, "--result-json", help="Write a JSON summary (stage folder, case "
                                    "ids, seconds) to this local path or URI."),
) -> None:
    """Crop, transpose, resample and normalize the training cases for one configuration (spec §4)."""
    t0 = time.monotonic()
    bind_context(stage="preprocess", configuration=configuration.value)
    shard_spec = parse_shard(shard)
    the_plans = Plans.from_json(storage.read_text(plans), source=plans)
    stage = the_plans.stage_for(configuration.value)
    workers = num_processes if num_processes > 0 else default_workers("nnUNet_def_n_proc", cap=8)
    with tempfile.TemporaryDirectory(prefix="nnkube-preprocess-") as scratch:
        scratch_path = Path(scratch)
        task_dir, ids = _stage_dataset(dataset, shard_spec, scratch_path)
        bind_context(dataset=task_dir.name if not storage.is_s3(dataset) else storage.basename(dataset))
        remote = storage.is_s3(output)
        out_dir = scratch_path / "output" if remote else Path(storage.to_local_path(output))
        done = preprocess_dataset(task_dir, the_plans, [stage], out_dir, workers, case_ids=ids)
        if remote:
            storage.upload_tree(out_dir, output)
    seconds = round(time.monotonic() - t0, 3)
    folder = the_plans.stage_folder(stage)
    result = {
        "schema_version": 1,
        "step": "preprocess",
        "configuration": configuration.value,
        "stage": stage,
        "stage_folder": storage.join(output, folder),
        "gt_segmentations": storage.join(output, "gt_segmentations"),
        "shard": f"{shard_spec[0]}/{shard_spec[1]}",
        "num_cases": len(done),
        "case_ids": done,
        "seconds": seconds,
    }
    if result_json:
        if storage.is_s3(result_json):
            storage.write_text(result_json, json.dumps(result, indent=2))
        else:
            write_json_atomic(os.fspath(storage.to_local_path(result_json)), result)
    typer.echo(f"preprocessed {len(done)} case(s) for {configuration.value} into "
               f"{storage.join(output, folder)} in {seconds:.1f} s")
