"""Checkpoints: torch state dicts (loadable with ``weights_only=True``) plus a typed JSON sidecar.

nnU-Net v1 writes ``model_*.model`` with a pickled ``.model.pkl`` companion; nnkube keeps the file names but
stores only tensors in the ``.model`` file and everything else (epoch, curves, EMA, trainer name) in
``<name>.model.json`` (:class:`TrainingState`). Both are written atomically (temporary file, then rename), the
sidecar last, so a checkpoint whose sidecar exists is complete. The state is also embedded in the ``.model``
file (as JSON text) and that copy is the one loaded: a process killed between replacing an existing
``.model`` and rewriting its sidecar would otherwise pair new weights with the previous epoch's state.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from stages.documents import Document
from stages.errors import BadInputError
from stages.fsutil import atomic_path

log = logging.getLogger(__name__)

FINAL = "model_final_checkpoint.model"
LATEST = "model_latest.model"
BEST = "model_best.model"


class TrainingState(Document):
    """Everything about a training run that is not a tensor; the sidecar of each checkpoint."""

    KIND = "training state"
    SCHEMA_VERSION = 1

    trainer: str
    task: str = ""
    configuration: str
    fold: str
    plans_identifier: str = "nnUNetPlansv2.1"
    num_input_channels: int
    num_classes: int = Field(description="Network output channels (incl. background).")
    epoch: int = Field(0, description="Number of completed epochs.")
    max_epochs: int
    iterations_per_epoch: int
    train_losses: list[float] = Field(default_factory=list)
    val_losses: list[float] = Field(default_factory=list)
    val_eval_metrics: list[float] = Field(default_factory=list, description="Online global fg Dice per epoch.")
    ema_metrics: list[float] = Field(default_factory=list)
    learning_rates: list[float] = Field(default_factory=list)
    epoch_seconds: list[float] = Field(default_factory=list)
    ema_state: dict[str, Any] = Field(default_factory=dict, description="EmaTracker state.")
    best_ema: float | None = None
    best_epoch: int | None = None
    finished: bool = False
    world_size: int = 1
    config: dict[str, Any] = Field(default_factory=dict, description="The TrainerConfig in force.")


def save_checkpoint(
    path: str | os.PathLike,
    network: torch.nn.Module,
    state: TrainingState,
    optimizer: torch.optim.Optimizer | None = None,
    grad_scaler: Any | None = None,
) -> Path:
    """Write ``path`` (tensors) then ``path.json`` (state), both atomically.

    Args:
        path: Checkpoint file, e.g. ``fold_0/model_latest.model``.
        network: The (unwrapped) network.
        state: Training state to store beside it.
        optimizer: Optimizer whose state is needed to resume (omitted for final/best weights if None).
        grad_scaler: AMP grad scaler (CUDA), if any.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob: dict[str, Any] = {"network": network.state_dict(), "state": state.to_json(indent=None)}
    if optimizer is not None:
        blob["optimizer"] = optimizer.state_dict()
    if grad_scaler is not None:
        blob["grad_scaler"] = grad_scaler.state_dict()
    with atomic_path(path, suffix=".model") as tmp:
        torch.save(blob, tmp)
    state.save(sidecar(path))
    log.info("saved checkpoint %s (epoch %d)", path.name, state.epoch)
    return path


def sidecar(path: str | os.PathLike) -> Path:
    """The JSON sidecar of a checkpoint file."""
    return Path(f"{path}.json")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict, TrainingState]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: never unpickles objects).

    The state embedded in the ``.model`` file wins over the sidecar (which older checkpoints need).
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: checkpoint is missing")
    blob = torch.load(path, map_location=map_location, weights_only=True)
    embedded = blob.pop("state", None)
    if isinstance(embedded, str):
        return blob, TrainingState.from_json(embedded, source=str(path))
    if not sidecar(path).is_file():
        raise BadInputError(f"{path}: checkpoint sidecar {sidecar(path).name} is missing")
    return blob, TrainingState.load(sidecar(path))


def find_resume_checkpoint(fold_dir: str | os.PathLike) -> Path | None:
    """Checkpoint to continue from, in nnU-Net's order: final, then latest, then best."""
    for name in (FINAL, LATEST, BEST):
        p = Path(fold_dir) / name
        if p.is_file() and sidecar(p).is_file():
            return p
    return None
