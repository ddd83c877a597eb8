"""``python -m stages train``: train one configuration x fold from S3 (or local) data, resumable after pre-emption.

The stage copies what a fold needs from the preprocessed prefix (plans, ``splits_final.json``, the
configuration's stage folder, ``gt_segmentations``) into scratch, then trains with ``resume=True`` from the
newest complete checkpoint found under ``<output>/fold_F/`` (final, then latest, then best). Every checkpoint the
trainer writes is uploaded at once (sidecar removed first, model, then sidecar: a checkpoint whose sidecar is
there is complete), so an Argo retry of a pre-empted pod continues where it stopped; progress.png and the
training log follow at most every ``--upload-every`` seconds. On SIGTERM the trainer saves ``model_latest``,
the upload finishes, and the stage exits 75 (transient: retry).

A resume record (``fold_F/_NNKUBE_RESUME.json``) holds the digest of the inputs and of the trainer, plans and
fold: checkpoints of a run on other inputs are discarded instead of resumed, while a rerun that only changes
``--epochs`` or ``--iterations`` continues from them (as nnU-Net's ``-c`` would). The fold's completion marker
is ``fold_F/_NNKUBE_COMPLETE.json``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from stages import storage
from stages.errors import BadInputError
from stages.paths import CASCADE_CONFIGURATION, PRED_NEXT_STAGE, lowres_prediction_folder
from stages.stagekit.guard import WriteGuard
from stages.stagekit.options import raw_prefix_option, result_json_option
from stages.train.fold_sync import (
    FoldSync,
    fetch_artifacts,
    fold_extra,
    restore_checkpoint,
)

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, help="Train one configuration x fold (resumable from S3).")

ARTIFACTS_ENV = "NNKUBE_ARTIFACTS_DIR"
GT_FOLDER = "gt_segmentations"
CONFIGURATION_NAMES = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")


def _train_fold_fn() -> Callable[..., dict | None]:
    """The training entry point (imported lazily: it pulls in torch)."""
    from stages.train.run import train_fold

    return train_fold


def parse_fold(text: str) -> int | str:
    """``"all"`` or a fold index >= 0.

    Raises:
        BadInputError: Anything else.
    """
    if text == "all":
        return text
    try:
        fold = int(text)
    except ValueError:
        fold = -1
    if fold < 0:
        raise BadInputError(f"--fold {text!r}: expected a fold index (0, 1, ...) or 'all'")
    return fold


def check_configuration(configuration: str) -> None:
    """Raise BadInputError for a configuration name nnU-Net v1 does not know."""
    if configuration not in CONFIGURATION_NAMES:
        raise BadInputError(f"--configuration {configuration!r}: expected one of {', '.join(CONFIGURATION_NAMES)}")


def preprocessed_inputs(preprocessed: str, configuration: str, plans_identifier: str) -> list[str]:
    """URIs a fold reads: plans, stage folder(s) and gt_segmentations (prefixes end in ``/``), splits, dataset.json.

    A 3d_lowres fold also reads the 3d_fullres stage folder: after its validation it predicts the validation cases
    on that grid for the cascade (``pred_next_stage``).
    """
    from stages.dataset.models import DATASET_JSON
    from stages.plan.models import Plans, plans_filename
    from stages.train.splits import SPLITS_FILENAME

    plans_file = storage.join(preprocessed, plans_filename("2D" if configuration == "2d" else "3D", plans_identifier))
    plans = Plans.from_json(storage.read_bytes(plans_file), source=plans_file)
    stages_read = [plans.stage_for(configuration)]
    if configuration == "3d_lowres":  # pred_next_stage predicts the validation cases on the 3d_fullres grid
        stages_read.append(plans.stage_for(CASCADE_CONFIGURATION))
    uris = [plans_file, *(storage.join(preprocessed, plans.stage_folder(s)) + "/" for s in stages_read),
            storage.join(preprocessed, GT_FOLDER) + "/"]
    uris += [u for u in (storage.join(preprocessed, n) for n in (SPLITS_FILENAME, DATASET_JSON)) if storage.exists(u)]
    return uris


def stage_preprocessed(preprocessed: str, inputs: list[str], dest: Path) -> Path:
    """A local copy of ``inputs`` (below ``preprocessed``) in ``dest``: S3 is downloaded, local files linked.

    Local files are symlinked one by one into real folders, so whatever the trainer writes (e.g. a missing
    ``splits_final.json``) lands in scratch and never in the input.
    """
    base = preprocessed.rstrip("/")
    for uri in inputs:
        rel = uri[len(base) + 1:].rstrip("/")
        target = dest / rel
        if storage.is_s3(uri) and uri.endswith("/"):
            storage.download_tree(uri, target)
        elif storage.is_s3(uri):
            storage.download_file(uri, target)
        else:
            source = Path(storage.to_local_path(uri)).resolve()
            files = [p for p in source.rglob("*") if p.is_file()] if uri.endswith("/") else [source]
            for path in files:
                link = target / path.relative_to(source) if uri.endswith("/") else target
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(path, link)
    return dest


def prev_stage_prefix(prev_stage: str | None, output: str, configuration: str, trainer: str,
                      plans_identifier: str) -> str | None:
    """The prefix (ending in ``/``) of the 3d_lowres segmentations a cascade fold reads; None for other configurations.

    Without ``--prev-stage`` it is nnU-Net v1's location next to the cascade's trainer folder:
    ``<results>/nnUNet/3d_lowres/<task>/<previous trainer>__<plans>/pred_next_stage/``, which the 3d_lowres train
    stages fill with their validation cases.

    Raises:
        BadInputError: ``--prev-stage`` given for another configuration, or nothing under the prefix.
    """
    if configuration != CASCADE_CONFIGURATION:
        if prev_stage is not None:
            raise BadInputError(f"--prev-stage is for {CASCADE_CONFIGURATION} only, not {configuration}")
        return None
    if prev_stage is None:
        from stages.train.trainer import get_trainer_class

        previous = getattr(get_trainer_class(trainer), "previous_trainer", "nnUNetTrainerV2")
        prev_stage = lowres_prediction_folder(output, previous, plans_identifier)
    prefix = prev_stage.rstrip("/") + "/"
    if not storage.list_prefix(prefix):
        raise BadInputError(f"no previous-stage segmentations under {prefix}: train and validate every 3d_lowres "
                            f"fold first (each writes its validation cases to {PRED_NEXT_STAGE}/), or pass "
                            f"--prev-stage")
    return prefix


def cascade_hook(prefix: str | None, work: Path, then: Callable[[Any], None] | None = None) -> Callable[[Any], None]:
    """A ``trainer_hook`` pointing a cascade trainer at a local copy of ``prefix`` (staged now), then ``then``."""
    local = stage_preprocessed(prefix.rstrip("/"), [prefix], work / "prev_stage") if prefix else None

    def hook(trainer: Any) -> None:
        if local is not None:
            trainer.prev_stage_folder = local
        if then is not None:
            then(trainer)

    return hook


def prev_stage_option() -> Any:
    """``--prev-stage`` (shared by train and validate)."""
    return typer.Option(None, "--prev-stage", help="3d_cascade_fullres only: folder or s3:// prefix of the "
                        "3d_lowres segmentations (<case>_segFromPrevStage.npy). Default: nnU-Net's location next "
                        "to --output, .../3d_lowres/<task>/<previous trainer>__<plans>/pred_next_stage.")


def artifacts_option() -> Any:
    """``--artifacts-dir`` (env ``NNKUBE_ARTIFACTS_DIR``)."""
    return typer.Option(None, "--artifacts-dir", envvar=ARTIFACTS_ENV,
                        help="Local folder receiving progress.png and summary.json for Argo output artifacts.")


def preprocessed_option() -> Any:
    """``--preprocessed`` (shared by train and validate)."""
    return typer.Option(..., "--preprocessed", help="The task's preprocessed folder or s3:// prefix "
                        "(plans, splits_final.json, stage folders, gt_segmentations).")


def configuration_option() -> Any:
    """``--configuration`` (shared by train and validate)."""
    return typer.Option(..., "--configuration", help="2d, 3d_fullres, 3d_lowres or 3d_cascade_fullres.")


def trainer_option() -> Any:
    """``--trainer`` (shared by train and validate)."""
    return typer.Option("nnUNetTrainerV2", "--trainer", help="Registered trainer class name.")


def plans_identifier_option() -> Any:
    """``--plans-identifier`` (shared by train and validate)."""
    return typer.Option("nnUNetPlansv2.1", "--plans-identifier",
                        help="Plans identifier (prefix of the plans file name).")


@app.command()
def train(
    preprocessed: str = preprocessed_option(),
    output: str = typer.Option(..., "--output", help="Trainer folder (local or s3://), e.g. "
                               ".../nnUNet/3d_fullres/Task004_Hippocampus/nnUNetTrainerV2__nnUNetPlansv2.1."),
    configuration: str = configuration_option(),
    fold: str = typer.Option(..., "--fold", help="Fold index (0-4 for the default splits) or 'all'."),
    trainer: str = trainer_option(),
    plans_identifier: str = plans_identifier_option(),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs to train (default: the trainer's)."),
    iterations: int | None = typer.Option(None, "--iterations", min=1, help="Training iterations per epoch "
                                          "(default: the trainer's, 250)."),
    save_every: int | None = typer.Option(None, "--save-every", min=1, help="Save and upload model_latest every "
                                          "N epochs (default: the trainer's, 50)."),
    val_iterations: int | None = typer.Option(None, "--val-iterations", min=1, help="Validation batches per "
                                              "epoch (default: the trainer's, 50)."),
    deterministic: bool = typer.Option(False, "--deterministic", help="Reseed every epoch and augment in-process "
                                       "(no workers), so that a run, resumed or not, is reproducible."),
    npz: bool = typer.Option(False, "--npz", help="Also export softmax probabilities of the validation cases."),
    num_workers: int | None = typer.Option(None, "--num-workers", min=0, help="Data-augmentation worker "
                                           "processes (default: from the CPUs available)."),
    upload_every: float = typer.Option(60.0, "--upload-every", min=0, help="Minimum seconds between uploads of "
                                       "progress.png and the training log (checkpoints are uploaded at once)."),
    task: str | None = typer.Option(None, "--task", help="Task name for logs (default: last part of "
                                    "--preprocessed)."),
    prev_stage: str | None = prev_stage_option(),
    artifacts_dir: Path | None = artifacts_option(),
    result_json: str | None = result_json_option(),
    raw_prefix: str | None = raw_prefix_option(),
) -> None:
    """Train one fold and validate it; resume from the newest checkpoint under --output."""
    from stages.log import bind_context
    from stages.stagekit import input_digest, protected_prefixes, run_stage, scratch_dir
    from stages.stagekit.run import marker_uri

    fold_value = parse_fold(fold)
    check_configuration(configuration)
    task = task or storage.basename(preprocessed)
    bind_context(stage="train", dataset=task, configuration=configuration, fold=str(fold_value))
    guard = WriteGuard(protected_prefixes(raw_prefix, [preprocessed]))
    pre_inputs = preprocessed_inputs(preprocessed, configuration, plans_identifier)
    prev_prefix = prev_stage_prefix(prev_stage, output, configuration, trainer, plans_identifier)
    inputs_digest = input_digest({}, pre_inputs + ([prev_prefix] if prev_prefix else []))
    identity = {"trainer": trainer, "configuration": configuration, "fold": str(fold_value),
                "plans_identifier": plans_identifier}
    resume_key = input_digest({"resume": identity, "inputs": inputs_digest}, [])
    fold_dir = f"fold_{fold_value}"
    config = {"max_epochs": epochs, "iterations_per_epoch": iterations, "val_iterations": val_iterations,
              "save_every": save_every, "num_workers": num_workers, "deterministic": deterministic or None}
    syncs: list[FoldSync] = []

    def compute(out_dir: Path) -> dict:
        sync = FoldSync(out_dir, output, fold_dir, guard, upload_every, artifacts_dir)
        syncs.append(sync)
        restore_checkpoint(sync, resume_key)
        with scratch_dir("train-input") as work:
            local_pre = stage_preprocessed(preprocessed, pre_inputs, work / task)
            hook = cascade_hook(prev_prefix, work, then=sync.attach)
            try:
                summary = _train_fold_fn()(
                    local_pre, out_dir, configuration, fold_value, trainer_name=trainer,
                    plans_identifier=plans_identifier, config=config, resume=True, save_npz=npz, task=task,
                    trainer_hook=hook,
                )
            except BaseException:
                sync.flush(best_effort=True)
                raise
        return fold_extra(sync, summary, output, configuration, fold_value)

    result = run_stage(
        "train", {**identity, "epochs": epochs, "iterations": iterations, "val_iterations": val_iterations,
                  "deterministic": deterministic, "npz": npz, "inputs": inputs_digest},
        [], output, compute, result_json, marker=marker_uri(storage.join(output, fold_dir)), guard=guard,
        publish=lambda _out, _prefix: syncs[-1].publish(prune_latest=True), check_outputs="exists",
    )
    if result.status == "skipped":
        fetch_artifacts(output, fold_dir, artifacts_dir)
    typer.echo(f"fold {fold_value} of {configuration} {result.status}: foreground mean Dice "
               f"{result.extra.get('dice')} ({storage.join(output, fold_dir)})")
