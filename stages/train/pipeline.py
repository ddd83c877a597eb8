"""The trainer's batch streams: loader + augmentation in background workers, for training and validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stages.plan.models import StagePlan
from stages.train.augmentation import (
    default_augmentation_params,
    get_training_transforms,
    get_validation_transforms,
)
from stages.train.data import DataLoader2D, DataLoader3D, PreprocessedDataset
from stages.train.loss import deep_supervision_scales
from stages.train.workers import Augmenter, default_num_workers


@dataclass
class TrainingData:
    """Infinite iterators of augmented training and plain validation batches."""

    train: Augmenter
    val: Augmenter

    def close(self) -> None:
        """Stop the worker processes."""
        for aug in (self.train, self.val):
            aug.close()


def make_training_data(
    data_folder: Path,
    stage_plan: StagePlan,
    dimension: str,
    train_keys: list[str],
    val_keys: list[str],
    batch_size: int,
    oversample_foreground_percent: float,
    num_workers: int | None,
    seed: int | None,
    use_mask_for_norm: dict[int, bool] | None = None,
    prev_stage_folder: Path | None = None,
    num_classes: int = 2,
    pin_memory: bool = False,
) -> TrainingData:
    """Build loaders (enlarged patch for training), the moreDA pipeline and the worker pools.

    Args:
        data_folder: The configuration's preprocessed folder.
        stage_plan: Patch size, pooling (deep-supervision scales) and dummy-2D flag.
        dimension: ``"2d"`` or ``"3d"``.
        train_keys: Training cases of the fold.
        val_keys: Validation cases of the fold.
        batch_size: Per-process batch size.
        oversample_foreground_percent: Fraction of foreground-forced samples per batch.
        num_workers: Training augmentation workers (validation gets half); None derives them from the CPUs.
        seed: Base seed of the workers; None leaves the generators alone (in-process: the caller seeds them).
        use_mask_for_norm: Channels normalized inside the nonzero mask (zeroed outside after augmentation).
        prev_stage_folder: Previous-stage predictions (cascade), or None.
        num_classes: Classes incl. background (cascade one-hot channels are 1..K-1).
        pin_memory: Pin batches for asynchronous GPU copies.
    """
    patch = stage_plan.patch_size
    params = default_augmentation_params(patch, dimension, stage_plan.do_dummy_2D_data_aug)
    scales = deep_supervision_scales(stage_plan.pool_op_kernel_sizes)
    cascade_labels = list(range(1, num_classes)) if prev_stage_folder is not None else None
    loader_cls = DataLoader2D if dimension == "2d" else DataLoader3D
    train_ds = PreprocessedDataset(data_folder, train_keys, prev_stage_folder)
    val_ds = PreprocessedDataset(data_folder, val_keys, prev_stage_folder)
    train_loader = loader_cls(train_ds, params.loader_patch_size, patch, batch_size, oversample_foreground_percent)
    val_loader = loader_cls(val_ds, patch, patch, batch_size, oversample_foreground_percent)
    train_tf = get_training_transforms(params, deep_supervision_scales=scales, use_mask_for_norm=use_mask_for_norm,
                                       cascade_labels=cascade_labels)
    val_tf = get_validation_transforms(deep_supervision_scales=scales, cascade_labels=cascade_labels)
    n_train = default_num_workers() if num_workers is None else num_workers
    n_val = max(n_train // 2, 1) if n_train > 0 else 0
    train = Augmenter(train_loader, train_tf, num_workers=n_train, seeds=seed, pin_memory=pin_memory)
    val_seed = None if seed is None else seed + 10_000
    val = Augmenter(val_loader, val_tf, num_workers=n_val, seeds=val_seed, pin_memory=pin_memory)
    return TrainingData(train, val)
