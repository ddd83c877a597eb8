"""Evaluation of prediction files against reference files into nnU-Net's summary.json.

Format (spec §6.8): ``results.all`` holds one entry per case with metrics per label plus ``test`` and
``reference`` paths; ``results.mean`` the NaN-mean per label and metric, and ``results.mean["mean"]`` the
foreground mean (mean over labels > 0), which model selection reads. Reported numbers are case-averaged.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from stages.documents import write_json_atomic
from stages.errors import BadInputError
from stages.evaluate.metrics import METRIC_NAMES, label_metrics, nanmean
from stages.imageio import has_image_suffix, read_image, strip_image_suffix

log = logging.getLogger(__name__)


def evaluate_case(prediction_file: str, reference_file: str, labels: list[int]) -> dict:
    """Metrics of one case: ``{"<label>": {...}, "test": path, "reference": path}``."""
    pred, pgeo = read_image(prediction_file)
    ref, rgeo = read_image(reference_file)
    if pred.shape != ref.shape:
        raise BadInputError(
            f"{Path(prediction_file).name}: prediction shape {pred.shape} differs from reference {ref.shape} "
            f"({reference_file})"
        )
    voxel_volume = float(np.prod(rgeo.spacing))
    result: dict = label_metrics(np.rint(pred).astype(np.int32), np.rint(ref).astype(np.int32), labels,
                                 voxel_volume)
    result["test"] = str(prediction_file)
    result["reference"] = str(reference_file)
    return result


def aggregate(per_case: list[dict], labels: list[int]) -> dict:
    """``results`` block of summary.json from per-case results."""
    mean: dict[str, dict[str, float]] = {}
    for label in labels:
        key = str(label)
        mean[key] = {m: nanmean([c[key][m] for c in per_case]) for m in METRIC_NAMES}
    fg = [str(label) for label in labels if label > 0]
    mean["mean"] = {m: nanmean([mean[k][m] for k in fg]) for m in METRIC_NAMES}
    return {"all": per_case, "mean": mean}


def foreground_mean_dice(summary: dict) -> float:
    """The model-selection score of a summary: mean over foreground labels of the case-averaged Dice."""
    mean = summary["results"]["mean"]
    values = [v["Dice"] for k, v in mean.items() if k not in ("mean", "0") and v.get("Dice") is not None]
    return nanmean(values)


def _sanitize(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_sanitize(v) for v in obj]
    return obj


def evaluate_folder(
    reference_dir: str | os.PathLike,
    prediction_dir: str | os.PathLike,
    labels: list[int],
    output_file: str | os.PathLike | None = None,
    num_processes: int = 2,
    name: str = "nnkube evaluation",
    task: str = "",
) -> dict:
    """Evaluate every prediction in ``prediction_dir`` against the same-named file in ``reference_dir``.

    Args:
        reference_dir: Folder of reference label maps (``<case>.nii.gz``).
        prediction_dir: Folder of predictions with the same file names.
        labels: Label values to evaluate (nnU-Net includes background 0).
        output_file: Where to write summary.json (default ``prediction_dir/summary.json``).
        num_processes: Parallel readers.
        name: ``name`` field of the summary.
        task: ``task`` field of the summary.

    Returns:
        The summary dict (NaN written as null).
    """
    reference_dir, prediction_dir = Path(reference_dir), Path(prediction_dir)
    preds = sorted(p for p in prediction_dir.iterdir() if has_image_suffix(p.name))
    if not preds:
        raise BadInputError(f"{prediction_dir}: no predictions to evaluate")
    refs = {strip_image_suffix(p.name): p for p in reference_dir.iterdir() if has_image_suffix(p.name)}
    missing = [p.name for p in preds if strip_image_suffix(p.name) not in refs]
    if missing:
        raise BadInputError(f"{reference_dir}: no reference for predictions {', '.join(missing[:10])}")
    pairs = [(str(p), str(refs[strip_image_suffix(p.name)])) for p in preds]
    if num_processes > 1 and len(pairs) > 1:
        with ProcessPoolExecutor(max_workers=num_processes) as pool:
            per_case = list(pool.map(evaluate_case, *zip(*pairs), [labels] * len(pairs)))
    else:
        per_case = [evaluate_case(p, r, labels) for p, r in pairs]
    summary = {
        "name": name,
        "description": "",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "task": task,
        "author": "nnkube",
        "results": aggregate(per_case, labels),
    }
    summary = _sanitize(summary)
    summary["id"] = hashlib.md5(json.dumps(summary, sort_keys=True).encode()).hexdigest()[:12]
    write_json_atomic(output_file or prediction_dir / "summary.json", summary)
    log.info("evaluated %d cases: foreground mean Dice %s", len(per_case), summary["results"]["mean"]["mean"]["Dice"])
    return summary
