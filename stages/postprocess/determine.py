"""Deciding which connected-component removals help, from predictions and references (spec §10).

Step A removes everything but the largest foreground component (all foreground classes as one region) from
every case; it is accepted iff at least one class's mean Dice improves strictly and no class gets worse.
Step B (only with more than one foreground class) removes all but the largest component of each class
separately, starting from step A's output when A was accepted, else from the raw predictions; each class whose
mean Dice improves strictly over its starting value is added on its own. The final rule set is then applied to
the raw predictions, which are evaluated again.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from stages.errors import BadInputError
from stages.evaluate.evaluator import evaluate_folder, foreground_mean_dice
from stages.postprocess.connected_components import apply_postprocessing_to_folder, image_files
from stages.postprocess.models import POSTPROCESSING_JSON, ClassSpec, PostprocessingRules

log = logging.getLogger(__name__)


def class_dice(summary: dict, classes: Sequence[int]) -> dict[str, float | None]:
    """Case-averaged Dice per class from a summary (``None`` where undefined)."""
    mean = summary["results"]["mean"]
    out: dict[str, float | None] = {}
    for c in classes:
        if str(c) not in mean:
            raise BadInputError(f"summary has no results for label {c} (labels there: {sorted(mean)})")
        value = mean[str(c)].get("Dice")
        out[str(c)] = None if value is None or math.isnan(value) else float(value)
    return out


def foreground_score(summary: dict) -> float | None:
    """Model-selection score: mean over foreground labels of the case-averaged Dice (None if undefined)."""
    score = foreground_mean_dice(summary)
    return None if math.isnan(score) else score


def _better(new: float | None, old: float | None) -> bool:
    return new is not None and old is not None and new > old


def _worse(new: float | None, old: float | None) -> bool:
    return new is not None and old is not None and new < old


def evaluation_labels(labels: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(labels to evaluate incl. background, foreground classes)`` from any label list."""
    fg = sorted({int(v) for v in labels if int(v) > 0})
    if not fg:
        raise BadInputError(f"labels {list(labels)}: postprocessing needs at least one foreground label")
    return [0, *fg], fg


def _reset_folder(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def determine_postprocessing(
    raw_folder: str | os.PathLike,
    gt_folder: str | os.PathLike,
    labels: Sequence[int],
    out_pp_folder: str | os.PathLike,
    json_path: str | os.PathLike | None = None,
    raw_summary: dict | None = None,
    num_processes: int = 1,
) -> PostprocessingRules:
    """Decide the postprocessing rules for a folder of raw predictions and write the postprocessed folder.

    Args:
        raw_folder: Raw predicted label images (``<case>.nii.gz``).
        gt_folder: Reference label images with the same names.
        labels: Label values (background is added if absent; the foreground ones are tested).
        out_pp_folder: Receives the postprocessed predictions and their ``summary.json`` (replaced).
        json_path: Where ``postprocessing.json`` goes (default: beside ``raw_folder``).
        raw_summary: The raw folder's evaluation, if already computed; otherwise it is evaluated and written
            to ``raw_folder/summary.json``.
        num_processes: Worker processes for postprocessing and evaluation.

    Returns:
        The rules, also saved at ``json_path``.
    """
    raw_folder, gt_folder, out_pp_folder = Path(raw_folder), Path(gt_folder), Path(out_pp_folder)
    if out_pp_folder.resolve() == raw_folder.resolve():
        raise BadInputError(f"{out_pp_folder}: the postprocessed folder must differ from the raw folder")
    eval_labels, fg = evaluation_labels(labels)
    files = image_files(raw_folder)
    if not files:
        raise BadInputError(f"{raw_folder}: no predictions to determine postprocessing from")
    if raw_summary is None:
        raw_summary = evaluate_folder(gt_folder, raw_folder, eval_labels, num_processes=num_processes)
    dc_raw = class_dice(raw_summary, fg)
    rules = PostprocessingRules(
        dc_per_class_raw=dc_raw, num_samples=len(files), validation_raw=raw_folder.name,
        validation_final=out_pp_folder.name,
    )
    out_pp_folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pp-", dir=out_pp_folder.parent) as tmp:
        step_a = Path(tmp) / "all_classes_as_fg"
        summary_a = _apply_and_evaluate(raw_folder, step_a, gt_folder, [fg], eval_labels, num_processes)
        rules.dc_per_class_pp_all = class_dice(summary_a, fg)
        pairs = [(rules.dc_per_class_pp_all[str(c)], dc_raw[str(c)]) for c in fg]
        accept_a = any(_better(n, o) for n, o in pairs) and not any(_worse(n, o) for n, o in pairs)
        log.info("whole-foreground largest component: Dice %s -> %s, %s", dc_raw, rules.dc_per_class_pp_all,
                 "accepted" if accept_a else "rejected")
        chosen: list[ClassSpec] = [list(fg)] if accept_a else []
        if len(fg) > 1:
            source, baseline = (step_a, rules.dc_per_class_pp_all) if accept_a else (raw_folder, dc_raw)
            step_b = Path(tmp) / "per_class"
            summary_b = _apply_and_evaluate(source, step_b, gt_folder, list(fg), eval_labels, num_processes)
            rules.dc_per_class_pp_per_class = class_dice(summary_b, fg)
            for c in fg:
                if _better(rules.dc_per_class_pp_per_class[str(c)], baseline[str(c)]):
                    chosen.append(c)
            log.info("per-class largest component: Dice %s -> %s", baseline, rules.dc_per_class_pp_per_class)
        rules.for_which_classes = chosen
    _reset_folder(out_pp_folder)
    if chosen:
        apply_postprocessing_to_folder(raw_folder, out_pp_folder, rules, num_processes)
    else:
        for f in files:
            shutil.copyfile(f, out_pp_folder / f.name)
    evaluate_folder(gt_folder, out_pp_folder, eval_labels, num_processes=num_processes)
    target = Path(json_path) if json_path is not None else raw_folder.parent / POSTPROCESSING_JSON
    rules.save(target)
    log.info("postprocessing for %s: for_which_classes=%s (%s)", raw_folder, chosen, target)
    return rules


def _apply_and_evaluate(
    source: Path, dest: Path, gt_folder: Path, specs: list, eval_labels: list[int], num_processes: int
) -> dict:
    apply_postprocessing_to_folder(source, dest, specs, num_processes)
    return evaluate_folder(gt_folder, dest, eval_labels, num_processes=num_processes)
