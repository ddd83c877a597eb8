"""Choosing the configuration, or pair of configurations, to predict with (spec §11.1, §11.2).

Every configuration is consolidated over its cross-validation folds (``cv_niftis_raw/``, postprocessing) and
scored by the foreground mean of its case-averaged Dice *before* postprocessing. Unless ensembling is disabled,
every unordered pair is ensembled from the folds' saved validation probabilities, evaluated, and given its own
postprocessing. The best score wins; on ties the last candidate (in evaluation order) wins.

Results already computed are reused when they are newer than all their inputs and cover the same cases.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stages.ensemble.merge import MergeJob, run_jobs
from stages.errors import BadInputError
from stages.evaluate.evaluator import evaluate_folder
from stages.imageio import strip_image_suffix
from stages.paths import fold_dir, trainer_dir
from stages.plan.models import PLANS_IDENTIFIER
from stages.postprocess.connected_components import image_files
from stages.postprocess.consolidate import (
    CV_RAW,
    DEFAULT_FOLDS,
    GT_NIFTIS,
    SUMMARY_JSON,
    VALIDATION_RAW,
    consolidate_folds,
    labels_from_summary,
    validation_files,
)
from stages.postprocess.determine import determine_postprocessing, foreground_score
from stages.postprocess.models import POSTPROCESSING_JSON
from stages.select import report
from stages.select.models import ENSEMBLED_POSTPROCESSED, ENSEMBLED_RAW, ENSEMBLES, SelectedModel, Selection

log = logging.getLogger(__name__)

DEFAULT_CONFIGURATIONS = ("2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres")
DEFAULT_TRAINER = "nnUNetTrainerV2"
DEFAULT_CASCADE_TRAINER = "nnUNetTrainerV2CascadeFullRes"
CASCADE = "3d_cascade_fullres"


@dataclass(frozen=True)
class Model:
    """A trained configuration: its names and folder."""

    configuration: str
    trainer: str
    plans: str
    folder: Path

    @property
    def key(self) -> str:
        """``<configuration>__<trainer>__<plans>``, the part of an ensemble's name."""
        return f"{self.configuration}__{self.trainer}__{self.plans}"


def ensemble_name(first: Model, second: Model) -> str:
    """``ensemble_<c1>__<tr1>__<pl>--<c2>__<tr2>__<pl>``."""
    return f"ensemble_{first.key}--{second.key}"


def _is_current(outputs: Iterable[Path], inputs: Iterable[Path]) -> bool:
    """True when every output exists and none is older than the newest input."""
    outs = list(outputs)
    if not all(p.is_file() for p in outs):
        return False
    newest_input = max((p.stat().st_mtime for p in inputs), default=0.0)
    return min(p.stat().st_mtime for p in outs) >= newest_input


def _case_names(folder: Path) -> set[str]:
    return {f.name for f in image_files(folder)} if folder.is_dir() else set()


def _read_summary(path: Path) -> dict:
    return json.loads(path.read_text())


def score_configuration(model: Model, folds: Sequence[int | str], gt_folder: Path, num_processes: int,
                        force: bool = False) -> dict:
    """Consolidate a model's folds (unless up to date) and return ``cv_niftis_raw/summary.json``."""
    predictions = validation_files(model.folder, folds)
    raw = model.folder / CV_RAW
    outputs = [raw / SUMMARY_JSON, model.folder / POSTPROCESSING_JSON]
    up_to_date = (not force and _case_names(raw) == {p.name for p in predictions.values()}
                  and _is_current(outputs, predictions.values()))
    if up_to_date:
        log.info("%s: consolidated cross-validation is up to date", model.key)
    else:
        consolidate_folds(model.folder, gt_folder, folds, num_processes=num_processes)
    return _read_summary(raw / SUMMARY_JSON)


def validation_probabilities(model: Model, folds: Sequence[int | str], task: str) -> dict[str, tuple[Path, Path]]:
    """``case -> (<case>.npz, <case>.json)`` of a model's validation predictions over the folds.

    Raises:
        BadInputError: A case's probabilities or properties are missing; the message names the fold and case
            and says how to produce them.
    """
    found: dict[str, tuple[Path, Path]] = {}
    for fold in folds:
        folder = fold_dir(model.folder, fold) / VALIDATION_RAW
        for image in image_files(folder):
            case = strip_image_suffix(image.name)
            npz, props = folder / f"{case}.npz", folder / f"{case}.json"
            missing = [p for p in (npz, props) if not p.is_file()]
            if missing:
                raise BadInputError(
                    f"{model.configuration} fold {fold}: {missing[0]} is missing (saved probabilities of case "
                    f"{case} are needed for ensembling); rerun the validation with `nnUNet_train "
                    f"{model.configuration} {model.trainer} {task} {fold} -val --npz`, or select with "
                    "--disable_ensembling"
                )
            found[case] = (npz, props)
    return found


def score_pair(first: Model, second: Model, task: str, out_root: Path, folds: Sequence[int | str],
               labels: list[int], gt_folder: Path, num_processes: int, force: bool = False) -> dict:
    """Ensemble two models' validation probabilities, evaluate, determine postprocessing; return the summary."""
    a = validation_probabilities(first, folds, task)
    b = validation_probabilities(second, folds, task)
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise BadInputError(
            f"{first.configuration} and {second.configuration} validated different cases "
            f"(only in {first.configuration}: {', '.join(only_a[:5]) or '-'}; only in {second.configuration}: "
            f"{', '.join(only_b[:5]) or '-'}); were they trained on the same splits?"
        )
    folder = out_root / ensemble_name(first, second)
    raw = folder / ENSEMBLED_RAW
    inputs = [p for pair in (*a.values(), *b.values()) for p in pair]
    outputs = [raw / SUMMARY_JSON, folder / POSTPROCESSING_JSON]
    if not force and _case_names(raw) == {f"{c}.nii.gz" for c in a} and _is_current(outputs, inputs):
        log.info("%s: ensemble is up to date", folder.name)
        return _read_summary(raw / SUMMARY_JSON)
    if raw.exists():
        shutil.rmtree(raw)
    raw.mkdir(parents=True)
    jobs = [MergeJob(c, (a[c][0], b[c][0]), a[c][1], raw / f"{c}.nii.gz") for c in sorted(a)]
    run_jobs(jobs, num_processes)
    summary = evaluate_folder(gt_folder, raw, labels, num_processes=num_processes, task=task,
                              name=folder.name)
    determine_postprocessing(raw, gt_folder, labels, folder / ENSEMBLED_POSTPROCESSED,
                             json_path=folder / POSTPROCESSING_JSON, raw_summary=summary,
                             num_processes=num_processes)
    return summary


def _score_value(value: float | None) -> float:
    return -math.inf if value is None else value


def find_best_configuration(
    results_folder: str | os.PathLike,
    task: str,
    configurations: Sequence[str] = DEFAULT_CONFIGURATIONS,
    trainer: str = DEFAULT_TRAINER,
    cascade_trainer: str = DEFAULT_CASCADE_TRAINER,
    plans: str = PLANS_IDENTIFIER,
    folds: Sequence[int | str] = DEFAULT_FOLDS,
    strict: bool = False,
    allow_ensembling: bool = True,
    gt_folder: str | os.PathLike | None = None,
    num_processes: int = 1,
    force: bool = False,
    results_uri: str | None = None,
) -> Selection:
    """Find the best configuration or pair ensemble of a task from its cross-validation results.

    Args:
        results_folder: ``RESULTS_FOLDER`` (models under ``nnUNet/<config>/<task>/<trainer>__<plans>``).
        task: Full task name (``Task004_Hippocampus``).
        configurations: Candidate configurations, in evaluation order.
        trainer: Trainer of the non-cascade configurations.
        cascade_trainer: Trainer of ``3d_cascade_fullres``.
        plans: Plans identifier.
        folds: Folds making up the cross-validation.
        strict: A requested configuration without a model folder is an error (otherwise skipped with a warning).
        allow_ensembling: Also evaluate every pair of configurations (needs validation ``--npz`` outputs).
        gt_folder: Reference segmentations (default: each model's ``gt_niftis/``).
        num_processes: Worker processes.
        force: Recompute consolidations and ensembles even when up to date.
        results_uri: How ``results_folder`` is named in the decision and commands (e.g. its S3 URI).

    Returns:
        The decision, also written as ``nnUNet/ensembles/<task>/selection.json`` with ``summary.csv`` and
        ``prediction_commands.txt``.
    """
    results_folder = Path(results_folder)
    models, skipped = [], []
    for configuration in dict.fromkeys(configurations):
        tr = cascade_trainer if configuration == CASCADE else trainer
        folder = trainer_dir(results_folder, configuration, task, tr, plans)
        if folder.is_dir():
            models.append(Model(configuration, tr, plans, folder))
        elif strict:
            raise BadInputError(f"{configuration}: no trained model at {folder} (--strict)")
        else:
            log.warning("%s: no trained model at %s; skipped", configuration, folder)
            skipped.append(configuration)
    if not models:
        raise BadInputError(f"{task}: none of the configurations {list(configurations)} has a trained model "
                            f"under {results_folder / 'nnUNet'}")

    def gt_of(model: Model) -> Path:
        return Path(gt_folder) if gt_folder is not None else model.folder / GT_NIFTIS

    summaries: dict[str, dict] = {}
    members: dict[str, tuple[Model, ...]] = {}
    for model in models:
        summaries[model.configuration] = score_configuration(model, folds, gt_of(model), num_processes, force)
        members[model.configuration] = (model,)
    out_root = results_folder / "nnUNet" / ENSEMBLES / task
    if allow_ensembling and len(models) > 1:
        labels = labels_from_summary(summaries[models[0].configuration])
        for i, first in enumerate(models):
            for second in models[i + 1:]:
                name = ensemble_name(first, second)
                summaries[name] = score_pair(first, second, task, out_root, folds, labels, gt_of(first),
                                             num_processes, force)
                members[name] = (first, second)

    scores = {k: foreground_score(s) for k, s in summaries.items()}
    best_value = max(_score_value(v) for v in scores.values())
    best = [k for k, v in scores.items() if _score_value(v) == best_value][-1]
    chosen = members[best]
    pp_json = (out_root / best if len(chosen) > 1 else chosen[0].folder) / POSTPROCESSING_JSON
    root = results_uri if results_uri is not None else str(results_folder)
    selection = Selection(
        task=task, results_folder=root, best=best,
        score=None if math.isinf(best_value) else best_value,
        models=[SelectedModel(configuration=m.configuration, trainer=m.trainer, plans_identifier=m.plans,
                              trainer_dir=m.folder.relative_to(results_folder).as_posix()) for m in chosen],
        postprocessing_json=pp_json.relative_to(results_folder).as_posix(),
        scores=scores,
        configurations=[m.configuration for m in models], skipped_configurations=skipped,
        trainer=trainer, cascade_trainer=cascade_trainer, plans_identifier=plans, folds=list(folds),
        ensembling=allow_ensembling,
    )
    selection.commands = report.prediction_commands(selection)
    report.write_outputs(selection, summaries, out_root)
    log.info("%s: best %s (%s)", task, best, selection.score)
    return selection
