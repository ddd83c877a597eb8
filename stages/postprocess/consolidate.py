"""Cross-validation consolidation (spec §10): all folds' validation predictions in one folder, one decision.

``<trainer dir>/fold_F/validation_raw/<case>.nii.gz`` of every fold are copied into ``cv_niftis_raw/``,
evaluated against the references (``summary.json``), and the postprocessing decision is taken on the whole
cross-validation: ``cv_niftis_postprocessed/`` and the trainer-level ``postprocessing.json`` that inference uses.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stages.errors import BadInputError
from stages.evaluate.evaluator import evaluate_folder
from stages.fsutil import copy_atomic
from stages.imageio import read_image, strip_image_suffix
from stages.paths import fold_dir
from stages.postprocess.connected_components import image_files
from stages.postprocess.determine import determine_postprocessing, evaluation_labels
from stages.postprocess.models import POSTPROCESSING_JSON, PostprocessingRules

log = logging.getLogger(__name__)

DEFAULT_FOLDS = (0, 1, 2, 3, 4)
VALIDATION_RAW = "validation_raw"
CV_RAW = "cv_niftis_raw"
CV_POSTPROCESSED = "cv_niftis_postprocessed"
GT_NIFTIS = "gt_niftis"
SUMMARY_JSON = "summary.json"


def validation_files(trainer_dir: str | os.PathLike, folds: Sequence[int | str]) -> dict[str, Path]:
    """``case -> validation prediction`` over the folds; errors for a missing fold or a case in two folds."""
    found: dict[str, Path] = {}
    for fold in folds:
        folder = fold_dir(Path(trainer_dir), fold) / VALIDATION_RAW
        if not folder.is_dir():
            raise BadInputError(
                f"{folder}: fold {fold} has no validation predictions (did its training and final validation "
                "finish? rerun it with nnUNet_train ... -val)"
            )
        for f in image_files(folder):
            case = strip_image_suffix(f.name)
            if case in found:
                raise BadInputError(f"case {case} is predicted in two folds: {found[case]} and {f}")
            found[case] = f
    return found


def labels_from_summary(summary: dict) -> list[int]:
    """The label values a summary.json was computed for."""
    return sorted(int(k) for k in summary["results"]["mean"] if k != "mean")


def infer_labels(trainer_dir: str | os.PathLike, folds: Sequence[int | str], gt_folder: str | os.PathLike) -> list[int]:
    """Labels of a trained model: from a fold's ``validation_raw/summary.json``, else the references' values."""
    for fold in folds:
        summary = fold_dir(Path(trainer_dir), fold) / VALIDATION_RAW / SUMMARY_JSON
        if summary.is_file():
            try:
                return labels_from_summary(json.loads(summary.read_text()))
            except (ValueError, KeyError) as exc:
                log.warning("%s: unreadable (%s); reading labels from the references", summary, exc)
    values: set[int] = {0}
    for f in image_files(gt_folder):
        values.update(int(v) for v in np.unique(read_image(f)[0]))
    return sorted(values)


def collect_cv_predictions(
    trainer_dir: str | os.PathLike, gt_folder: str | os.PathLike, folds: Sequence[int | str]
) -> Path:
    """Copy every fold's validation predictions into ``cv_niftis_raw/`` (replaced) and return that folder.

    Raises:
        BadInputError: A fold is missing, a case appears twice, or the number of predictions differs from
            the number of references (the message lists the cases concerned).
    """
    trainer_dir = Path(trainer_dir)
    predictions = validation_files(trainer_dir, folds)
    references = {strip_image_suffix(f.name) for f in image_files(gt_folder)}
    if len(predictions) != len(references):
        missing = sorted(references - set(predictions))
        extra = sorted(set(predictions) - references)
        raise BadInputError(
            f"{trainer_dir}: folds {list(folds)} hold {len(predictions)} validation predictions but {gt_folder} "
            f"holds {len(references)} references"
            + (f"; not predicted: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else "") if missing
               else "")
            + (f"; without reference: {', '.join(extra[:10])}" if extra else "")
        )
    out = trainer_dir / CV_RAW
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in predictions.values():
        copy_atomic(f, out / f.name)
    return out


def consolidate_folds(
    trainer_dir: str | os.PathLike,
    gt_folder: str | os.PathLike | None = None,
    folds: Sequence[int | str] = DEFAULT_FOLDS,
    labels: Sequence[int] | None = None,
    num_processes: int = 1,
) -> PostprocessingRules:
    """Consolidate a model's cross-validation and determine its postprocessing.

    Args:
        trainer_dir: ``<RESULTS_FOLDER>/nnUNet/<config>/<task>/<trainer>__<plans>``.
        gt_folder: Reference segmentations (default ``<trainer_dir>/gt_niftis``).
        folds: Folds whose ``validation_raw/`` are collected.
        labels: Labels to evaluate (default: from a fold's summary.json, else the references' values).
        num_processes: Worker processes.

    Returns:
        The rules, saved as ``<trainer_dir>/postprocessing.json``; ``cv_niftis_raw/summary.json`` and
        ``cv_niftis_postprocessed/summary.json`` are written too.
    """
    trainer_dir = Path(trainer_dir)
    gt = Path(gt_folder) if gt_folder is not None else trainer_dir / GT_NIFTIS
    if not gt.is_dir():
        raise BadInputError(f"{gt}: reference segmentations not found (expected the copied gt_niftis/)")
    raw = collect_cv_predictions(trainer_dir, gt, folds)
    eval_labels, _ = evaluation_labels(labels if labels is not None else infer_labels(trainer_dir, folds, gt))
    summary = evaluate_folder(gt, raw, eval_labels, num_processes=num_processes)
    return determine_postprocessing(
        raw, gt, eval_labels, trainer_dir / CV_POSTPROCESSED, json_path=trainer_dir / POSTPROCESSING_JSON,
        raw_summary=summary, num_processes=num_processes,
    )
