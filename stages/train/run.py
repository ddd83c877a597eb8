"""Train (and validate) one configuration x fold: the function behind ``nnUNet_train`` and ``stages train``."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from stages.errors import BadInputError
from stages.plan.models import Plans, plans_filename
from stages.train.ddp import DistInfo, barrier
from stages.train.trainer import get_trainer_class

log = logging.getLogger(__name__)


def load_plans_for(preprocessed_dir: Path, configuration: str, plans_identifier: str) -> Plans:
    """The 2D or 3D plans a configuration uses."""
    dim = "2D" if configuration == "2d" else "3D"
    return Plans.load(preprocessed_dir / plans_filename(dim, plans_identifier))


def train_fold(
    preprocessed_dir: str | Path,
    trainer_folder: str | Path,
    configuration: str,
    fold: int | str,
    trainer_name: str = "nnUNetTrainerV2",
    plans_identifier: str = "nnUNetPlansv2.1",
    config: dict[str, Any] | None = None,
    resume: bool = False,
    validation_only: bool = False,
    save_npz: bool = False,
    run_validation: bool = True,
    task: str = "",
    dist_info: DistInfo | None = None,
    trainer_hook: Any = None,
) -> dict | None:
    """Train one fold and run its final validation.

    Args:
        preprocessed_dir: ``$nnUNet_preprocessed/TaskXXX_NAME``.
        trainer_folder: ``$RESULTS_FOLDER/nnUNet/<cfg>/<task>/<trainer>__<plans>``.
        configuration: ``2d``, ``3d_fullres``, ``3d_lowres`` or ``3d_cascade_fullres``.
        fold: Fold index or ``"all"``.
        trainer_name: Registered trainer class name.
        plans_identifier: Plans identifier (file name prefix).
        config: Trainer config overrides (e.g. ``{"max_epochs": 10, "iterations_per_epoch": 50}``).
        resume: ``-c``: continue from the fold's latest checkpoint.
        validation_only: ``-val``: only rerun the final validation with the final checkpoint.
        save_npz: ``--npz``: also export softmax probabilities of the validation cases.
        run_validation: Run the final validation after training.
        task: Task name for logs.
        dist_info: DDP rank/world (single process by default).
        trainer_hook: Optional callable receiving the trainer before training (e.g. to attach uploads).

    Returns:
        The validation summary dict (rank 0), or None.
    """
    preprocessed_dir, trainer_folder = Path(preprocessed_dir), Path(trainer_folder)
    if not preprocessed_dir.is_dir():
        raise BadInputError(f"{preprocessed_dir}: preprocessed task folder not found; run preprocessing first")
    plans = load_plans_for(preprocessed_dir, configuration, plans_identifier)
    info = dist_info or DistInfo()
    fold_folder = trainer_folder / f"fold_{fold}"
    trainer_cls = get_trainer_class(trainer_name)
    trainer = trainer_cls(plans, configuration, fold, preprocessed_dir, fold_folder, config=config, task=task,
                          dist_info=info)
    if trainer_hook is not None:
        trainer_hook(trainer)
    if info.is_main:
        trainer_folder.mkdir(parents=True, exist_ok=True)
        plans.save(trainer_folder / "plans.json")
        if (preprocessed_dir / "dataset.json").is_file():
            shutil.copy2(preprocessed_dir / "dataset.json", trainer_folder / "dataset.json")
    if not validation_only:
        trainer.run_training(resume=resume)
    else:
        from stages.train.checkpoint import FINAL

        trainer.initialize()
        trainer.load(fold_folder / FINAL, training=False)
    barrier()
    if not (run_validation or validation_only):
        return None
    from stages.train.validation import validate_fold

    summary = validate_fold(trainer, save_npz=save_npz)
    from stages.predict.cascade import after_lowres_validation

    after_lowres_validation(trainer)  # 3d_lowres: predict the next stage's input for the fold's cases
    return summary
