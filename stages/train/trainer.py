"""The training loop of ``nnUNetTrainerV2`` (spec §6), split into small overridable hooks.

A trainer is selected by class name (``nnUNetTrainerV2``, ``nnUNetTrainerV2_5epochs``, a user's subclass):
every subclass registers itself in :data:`TRAINERS`. Subclasses override :attr:`default_config` (budget,
learning rate ...) or one of the ``build_*`` hooks; the loop itself (:meth:`run_training`) stays here.

Resuming (``-c``) restores network, optimizer, grad-scaler, the epoch counter and every curve, so a resumed
run continues the same curves. A SIGTERM (pod pre-emption) saves ``model_latest.model`` before exiting.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from stages.errors import BadInputError, TransientError
from stages.plan.models import Plans, StagePlan
from stages.train import checkpoint as ckpt
from stages.train.ddp import DistInfo, batch_and_oversample
from stages.train.loss import (
    DCandCELoss,
    DeepSupervisionLoss,
    all_reduce_with_grad,
    batch_dice_for,
    deep_supervision_weights,
)
from stages.train.metrics import EmaTracker, OnlineEvaluator
from stages.train.network import build_network, init_weights_he
from stages.train.pipeline import TrainingData, make_training_data
from stages.train.progress import TrainingLog, plot_progress, report_argo_progress
from stages.train.schedule import make_optimizer, poly_lr, set_momentum

log = logging.getLogger(__name__)

TRAINERS: dict[str, type[nnUNetTrainerV2]] = {}


class TrainerConfig(BaseModel):
    """Hyper-parameters and run options of a trainer (defaults: nnUNetTrainerV2, spec §6.1)."""

    model_config = ConfigDict(extra="forbid")

    max_epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations: int = 50
    initial_lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99
    grad_clip: float = 12.0
    oversample_foreground_percent: float = 0.33
    save_every: int = 50
    num_workers: int | None = None
    amp: bool | None = None
    deterministic: bool = False
    seed: int = 12345
    distribute_batch: bool = False
    val_step_size: float = 0.5
    save_latest_on_sigterm: bool = True
    safeguard_epoch: int = 100
    safeguard_momentum: float = 0.95


class _PreemptedError(Exception):
    pass


class nnUNetTrainerV2:  # noqa: N801 - the name users select it by
    """nnU-Net v1's default trainer: SGD Nesterov, poly lr, DC+CE with deep supervision, moreDA augmentation.

    Args:
        plans: The plans (3D plans for 3d_* configurations, 2D plans for 2d).
        configuration: ``2d``, ``3d_fullres``, ``3d_lowres`` or ``3d_cascade_fullres``.
        fold: Fold index or ``"all"``.
        preprocessed_dir: The task's preprocessed folder (plans, splits_final.json, stage folders).
        output_dir: The fold folder to write (``.../<trainer>__<plans>/fold_<f>``).
        config: Overrides of :attr:`default_config`.
        task: Task name, for logs and the state sidecar.
        dist_info: Rank and world size (DDP); single process by default.
        device: Torch device; default CUDA when available, else CPU.
    """

    default_config: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        TRAINERS[cls.__name__] = cls

    def __init__(
        self,
        plans: Plans,
        configuration: str,
        fold: int | str,
        preprocessed_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        config: dict[str, Any] | None = None,
        task: str = "",
        dist_info: DistInfo | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        merged = {**self.default_config, **{k: v for k, v in (config or {}).items() if v is not None}}
        self.config = TrainerConfig(**merged)
        self.plans = plans
        self.configuration = configuration
        self.fold = str(fold)
        self.stage = plans.stage_for(configuration)
        self.stage_plan: StagePlan = plans.plans_per_stage[self.stage]
        self.preprocessed_dir = Path(preprocessed_dir)
        self.output_dir = Path(output_dir)
        self.task = task
        self.dist = dist_info or DistInfo()
        self.device = torch.device(device) if device else self._default_device()
        self.amp = self.config.amp if self.config.amp is not None else self.device.type == "cuda"
        self.dimension = "2d" if configuration == "2d" else "3d"
        self.num_classes = plans.num_classes_with_background
        self.network: torch.nn.Module | None = None
        self.state: ckpt.TrainingState | None = None
        self._stop_requested = False
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.log = TrainingLog(self.output_dir, enabled=self.dist.is_main)

    # ------------------------------------------------------------------ hooks
    def _default_device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.dist.local_rank)
        return torch.device("cpu")

    @property
    def data_folder(self) -> Path:
        """Preprocessed folder of this configuration's stage."""
        return self.preprocessed_dir / self.plans.stage_folder(self.stage)

    @property
    def num_input_channels(self) -> int:
        """Network input channels (modalities; the cascade adds one-hot previous-stage channels)."""
        return self.plans.num_modalities

    @property
    def prev_stage_folder(self) -> Path | None:
        """Folder of previous-stage predictions (cascade only)."""
        return None

    def network_input(self, case_id: str, data: np.ndarray) -> np.ndarray:
        """Network input of a whole preprocessed case for validation (the cascade appends the one-hot seg)."""
        return data

    def build_network(self) -> torch.nn.Module:
        """The Generic U-Net of this configuration."""
        return build_network(self.stage_plan, self.num_input_channels, self.num_classes, self.dimension)

    def build_loss(self) -> DeepSupervisionLoss:
        """DC+CE with deep-supervision weights (batch Dice per spec §6.4's rule)."""
        batch_dice = batch_dice_for(self.configuration, self.plans.has_cascade)
        base = DCandCELoss(batch_dice=batch_dice, batch_reduce=all_reduce_with_grad if self.dist.enabled else None)
        return DeepSupervisionLoss(base, deep_supervision_weights(self.stage_plan.num_pool))

    def build_data(self, train_keys: list[str], val_keys: list[str]) -> TrainingData:
        """Training and validation batch generators (augmentation in background workers).

        Deterministic runs augment in-process from the generators reseeded every epoch, so that a run resumed
        at epoch ``k`` draws the same batches as an uninterrupted one (workers would restart their streams).
        """
        batch_size, oversample = batch_and_oversample(
            self.stage_plan.batch_size, self.dist, self.config.distribute_batch,
            self.config.oversample_foreground_percent,
        )
        deterministic = self.config.deterministic
        return make_training_data(
            data_folder=self.data_folder,
            stage_plan=self.stage_plan,
            dimension=self.dimension,
            train_keys=train_keys,
            val_keys=val_keys,
            batch_size=batch_size,
            oversample_foreground_percent=oversample,
            num_workers=0 if deterministic else self.config.num_workers,
            seed=None if deterministic else self.config.seed + 1000 * self.dist.rank,
            prev_stage_folder=self.prev_stage_folder,
            num_classes=self.num_classes,
            use_mask_for_norm=self.plans.use_mask_for_norm,
            pin_memory=self.device.type == "cuda",
        )

    # ------------------------------------------------------------------ setup
    def split(self) -> tuple[list[str], list[str]]:
        """Training and validation cases of this fold from ``splits_final.json`` (created if missing)."""
        from stages.train.splits import fold_cases, load_or_create_splits

        case_ids = sorted(p.name[: -len(".json")] for p in self.data_folder.glob("*.json"))
        if not case_ids:
            raise BadInputError(f"{self.data_folder}: no preprocessed cases; run preprocessing first")
        splits = load_or_create_splits(self.preprocessed_dir / "splits_final.json", case_ids)
        return fold_cases(splits, self.fold, case_ids)

    def initialize(self) -> None:
        """Build network, optimizer, loss and a fresh training state."""
        torch.manual_seed(self.config.seed + self.dist.rank)
        np.random.seed(self.config.seed + self.dist.rank)
        torch.backends.cudnn.benchmark = not self.config.deterministic
        torch.backends.cudnn.deterministic = self.config.deterministic
        self.network = self.build_network().to(self.device)
        self.optimizer = make_optimizer(
            self.network.parameters(), lr=self.config.initial_lr, weight_decay=self.config.weight_decay,
            momentum=self.config.momentum,
        )
        self.loss = self.build_loss()
        self.grad_scaler = torch.amp.GradScaler("cuda") if self.amp and self.device.type == "cuda" else None
        self.evaluator = OnlineEvaluator(self.num_classes)
        self.ema = EmaTracker()
        self.state = ckpt.TrainingState(
            trainer=type(self).__name__, task=self.task, configuration=self.configuration, fold=self.fold,
            plans_identifier=self.plans.plans_identifier, num_input_channels=self.num_input_channels,
            num_classes=self.num_classes, max_epochs=self.config.max_epochs,
            iterations_per_epoch=self.config.iterations_per_epoch, world_size=self.dist.world_size,
            config=self.config.model_dump(),
        )
        if self.dist.enabled:
            # find_unused_parameters: the coarsest deep-supervision head has loss weight 0, so its parameters
            # get no gradient, which DDP otherwise rejects
            self.ddp_network = torch.nn.parallel.DistributedDataParallel(
                self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        else:
            self.ddp_network = self.network

    def load(self, path: str | os.PathLike, training: bool = True) -> None:
        """Restore weights (and, for training, optimizer, grad scaler and curves) from a checkpoint."""
        blob, state = ckpt.load_checkpoint(path, map_location=self.device)
        if self.network is None:
            self.initialize()
        self.network.load_state_dict(blob["network"])
        if training:
            if "optimizer" in blob:
                self.optimizer.load_state_dict(blob["optimizer"])
            if self.grad_scaler is not None and "grad_scaler" in blob:
                self.grad_scaler.load_state_dict(blob["grad_scaler"])
            state.max_epochs = self.config.max_epochs
            state.iterations_per_epoch = self.config.iterations_per_epoch
            state.config = self.config.model_dump()
        self.state = state
        self.ema = EmaTracker.from_state_dict(state.ema_state) if state.ema_state else EmaTracker()
        self.log("loaded %s (epoch %d)", Path(path).name, state.epoch)

    def save(self, name: str, with_optimizer: bool = True) -> Path | None:
        """Write checkpoint ``name`` in the fold folder (rank 0 only)."""
        if not self.dist.is_main:
            return None
        path = ckpt.save_checkpoint(
            self.output_dir / name, self.network, self.state,
            self.optimizer if with_optimizer else None, self.grad_scaler if with_optimizer else None,
        )
        self.on_checkpoint_saved(path)
        return path

    def on_checkpoint_saved(self, path: Path) -> None:
        """Hook called after every checkpoint write (the S3 stage uploads it)."""

    # ------------------------------------------------------------------ loop
    def _set_lr(self, epoch: int) -> float:
        lr = poly_lr(epoch, self.config.max_epochs, self.config.initial_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        data = batch["data"]
        target = batch["target"]
        data = torch.as_tensor(data).to(self.device, non_blocking=True)
        target = [torch.as_tensor(t).to(self.device, non_blocking=True) for t in target]
        return data, target

    def train_step(self, batch: dict) -> float:
        """One optimizer step on a batch; returns the loss."""
        data, target = self._to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.amp):
            output = self.ddp_network(data)
            loss = self.loss(output, target)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip)
            self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def validation_step(self, batch: dict) -> float:
        """Loss and online-evaluation counts on a validation batch (no augmentation, no backprop)."""
        data, target = self._to_device(batch)
        with torch.autocast(self.device.type, enabled=self.amp):
            output = self.ddp_network(data)
            loss = self.loss(output, target)
        self.evaluator.update(output[0], target[0])
        return float(loss.detach())

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._stop_requested = True
        log.warning("SIGTERM received: saving model_latest.model after this iteration")

    def run_training(self, resume: bool = False) -> ckpt.TrainingState:
        """Train until ``max_epochs`` (resuming from the fold folder's checkpoint with ``resume``)."""
        train_keys, val_keys = self.split()
        self.initialize()
        if resume:
            found = ckpt.find_resume_checkpoint(self.output_dir)
            if found is not None:
                self.load(found, training=True)
            else:
                self.log("no checkpoint to continue from in %s; starting from scratch", self.output_dir)
        self.log("trainer %s, configuration %s, fold %s: %d training / %d validation cases, batch %d, patch %s, "
                 "device %s, amp %s, world %d", type(self).__name__, self.configuration, self.fold,
                 len(train_keys), len(val_keys), self.stage_plan.batch_size, self.stage_plan.patch_size,
                 self.device, self.amp, self.dist.world_size)
        if self.state.epoch >= self.config.max_epochs:
            self.log("training already finished (%d epochs)", self.state.epoch)
            return self.state
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if self.config.save_latest_on_sigterm else None
        data = self.build_data(train_keys, val_keys)
        try:
            while self.state.epoch < self.config.max_epochs:
                self._run_epoch(data)
        except _PreemptedError:
            self.save(ckpt.LATEST)
            raise TransientError(f"training pre-empted by SIGTERM after epoch {self.state.epoch}") from None
        finally:
            data.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        self.state.finished = True
        self.save(ckpt.FINAL)
        if self.dist.is_main:
            for name in (ckpt.LATEST,):
                for p in (self.output_dir / name, ckpt.sidecar(self.output_dir / name)):
                    p.unlink(missing_ok=True)
        return self.state

    def _run_epoch(self, data: TrainingData) -> None:
        epoch = self.state.epoch
        if self.config.deterministic:
            self.seed_epoch(epoch)
        start = time.time()
        lr = self._set_lr(epoch)
        self.network.train()
        self.network.do_ds = True
        losses = []
        for _ in range(self.config.iterations_per_epoch):
            losses.append(self.train_step(next(data.train)))
            if self._stop_requested:
                raise _PreemptedError()
        self.network.eval()
        self.evaluator.reset()
        val_losses = [self.validation_step(next(data.val)) for _ in range(self.config.val_iterations)]
        dice = self.evaluator.finish().mean_fg_dice
        is_best = self.ema.update(dice, epoch)
        ema = self.ema.ema if self.ema.ema is not None else float("nan")
        self.on_epoch_end(epoch, float(np.mean(losses)), float(np.mean(val_losses)) if val_losses else float("nan"),
                          dice, ema, is_best, lr, time.time() - start)

    def seed_epoch(self, epoch: int) -> None:
        """Deterministic mode: reseed torch, NumPy and ``random`` from (seed, epoch, rank) before an epoch."""
        torch.manual_seed(self.config.seed + epoch)
        seed = (self.config.seed + epoch + 1000 * self.dist.rank) % 2**32
        np.random.seed(seed)
        random.seed(seed)

    def maybe_apply_momentum_safeguard(self, epoch: int, dice: float) -> bool:
        """Spec §6.1: after epoch index ``safeguard_epoch`` (100) with a pseudo Dice of exactly 0, restart.

        The momentum drops to ``safeguard_momentum`` (0.95) and the weights are He-initialised again, as
        nnUNetTrainerV2 does for runs that got stuck predicting background only. Returns True if applied.
        """
        if epoch != self.config.safeguard_epoch or dice != 0:
            return False
        set_momentum(self.optimizer, self.config.safeguard_momentum)
        self.network.apply(init_weights_he)
        if self.dist.enabled:  # the ranks must restart from the same weights
            for tensor in self.network.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)
        self.log("pseudo Dice 0 after epoch %d: momentum lowered to %.2f and the network re-initialised",
                 epoch + 1, self.config.safeguard_momentum)
        return True

    def on_epoch_end(self, epoch: int, train_loss: float, val_loss: float, dice: float, ema: float,
                     is_best: bool, lr: float, seconds: float) -> None:
        """Record the epoch's curves, write progress and checkpoints."""
        s = self.state
        s.train_losses.append(train_loss)
        s.val_losses.append(val_loss)
        s.val_eval_metrics.append(dice)
        s.ema_metrics.append(ema)
        s.learning_rates.append(lr)
        s.epoch_seconds.append(seconds)
        s.epoch = epoch + 1
        s.ema_state = self.ema.state_dict()
        self.log("epoch %d/%d: train loss %.4f, val loss %.4f, pseudo Dice %.4f (EMA %.4f), lr %.5f, %.1f s",
                 epoch + 1, self.config.max_epochs, train_loss, val_loss, dice, ema, lr, seconds)
        self.maybe_apply_momentum_safeguard(epoch, dice)
        if not self.dist.is_main:
            return
        if is_best:
            s.best_ema, s.best_epoch = ema, epoch
            self.log("new best EMA pseudo Dice %.4f", ema)
            self.save(ckpt.BEST, with_optimizer=False)
        plot_progress(s, self.output_dir / "progress.png")
        report_argo_progress(s.epoch, self.config.max_epochs)
        if self.config.save_every > 0 and s.epoch % self.config.save_every == 0 and s.epoch < self.config.max_epochs:
            self.save(ckpt.LATEST)


def get_trainer_class(name: str) -> type[nnUNetTrainerV2]:
    """Trainer class by name (built-in variants and any imported user subclass)."""
    import stages.train.cascade  # noqa: F401  (registers nnUNetTrainerV2CascadeFullRes)
    import stages.train.variants  # noqa: F401  (registers the built-in variants)

    try:
        return TRAINERS[name]
    except KeyError:
        raise BadInputError(f"unknown trainer {name!r}; known: {', '.join(sorted(TRAINERS))}") from None


TRAINERS["nnUNetTrainerV2"] = nnUNetTrainerV2
