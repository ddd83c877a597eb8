"""``nnUNetTrainerV2CascadeFullRes``: the second stage of the cascade (spec §9).

The network sees the image channels plus a one-hot encoding (labels ``1..K-1``) of the 3d_lowres segmentation
resampled to the full-resolution grid. For training and validation these segmentations are the out-of-fold
predictions that every 3d_lowres fold wrote to ``<3d_lowres trainer folder>/pred_next_stage/`` (see
:func:`stages.predict.cascade.predict_next_stage`); training refuses to start while any case lacks one, i.e.
until all lowres folds have finished. Augmentation (``MoveSegAsOneHotToData`` and the cascade's binary
operators) is switched on by the data pipeline whenever :attr:`prev_stage_folder` is set.

The previous-stage folder defaults to nnU-Net v1's location relative to the fold folder
(``.../nnUNet/3d_lowres/<task>/<previous_trainer>__<plans>/pred_next_stage``); a stage that stages files
elsewhere assigns :attr:`prev_stage_folder` before training (e.g. from ``train_fold``'s ``trainer_hook``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from stages.errors import BadInputError, DatasetError
from stages.paths import CASCADE_CONFIGURATION, lowres_prediction_folder
from stages.predict.cascade import load_prev_stage_seg, onehot_foreground
from stages.train.data import prev_stage_file
from stages.train.trainer import nnUNetTrainerV2

MAX_NAMED = 20


def default_prev_stage_folder(fold_dir: str | os.PathLike, previous_trainer: str, plans_identifier: str) -> Path:
    """``<results>/nnUNet/3d_lowres/<task>/<previous_trainer>__<plans>/pred_next_stage`` for a cascade fold folder.

    Args:
        fold_dir: ``<results>/nnUNet/3d_cascade_fullres/<task>/<trainer>__<plans>/fold_<f>``.
        previous_trainer: Trainer class of the 3d_lowres stage.
        plans_identifier: Plans identifier shared by both stages.
    """
    return Path(lowres_prediction_folder(str(Path(fold_dir).parent), previous_trainer, plans_identifier))


class nnUNetTrainerV2CascadeFullRes(nnUNetTrainerV2):  # noqa: N801 - the name users select it by
    """nnUNetTrainerV2 on the image plus the one-hot 3d_lowres segmentation (``3d_cascade_fullres`` only).

    Attributes:
        previous_trainer: Trainer class whose 3d_lowres ``pred_next_stage`` is used (nnU-Net v1's default).
    """

    previous_trainer: ClassVar[str] = "nnUNetTrainerV2"

    def __init__(self, plans: Any, configuration: str, *args: Any, **kwargs: Any) -> None:
        if configuration != CASCADE_CONFIGURATION:
            raise BadInputError(f"{type(self).__name__} trains {CASCADE_CONFIGURATION} only, not {configuration!r}")
        if not plans.has_cascade:
            raise BadInputError(f"{CASCADE_CONFIGURATION} does not exist for this dataset: the plans have no "
                                f"3d_lowres stage")
        self._prev_stage_folder: Path | None = None
        super().__init__(plans, configuration, *args, **kwargs)

    @property
    def num_input_channels(self) -> int:
        """Modalities plus one channel per foreground class of the previous stage."""
        return self.plans.num_modalities + self.num_classes - 1

    @property
    def prev_stage_folder(self) -> Path:
        """Folder of ``<case>_segFromPrevStage.npy`` (assignable; default: the 3d_lowres trainer folder's)."""
        if self._prev_stage_folder is not None:
            return self._prev_stage_folder
        return default_prev_stage_folder(self.output_dir, self.previous_trainer, self.plans.plans_identifier)

    @prev_stage_folder.setter
    def prev_stage_folder(self, folder: str | os.PathLike) -> None:
        self._prev_stage_folder = Path(folder)

    def split(self) -> tuple[list[str], list[str]]:
        """The fold's cases; raises unless every case has its previous-stage segmentation."""
        train_keys, val_keys = super().split()
        folder = self.prev_stage_folder
        missing = [c for c in sorted({*train_keys, *val_keys})
                   if not (folder / prev_stage_file(c)).is_file()
                   and not (folder / prev_stage_file(c)).with_suffix(".npz").is_file()]
        if missing:
            more = " ..." if len(missing) > MAX_NAMED else ""
            raise DatasetError(
                f"seg from prev stage missing for {len(missing)} case(s) in {folder}: "
                f"{', '.join(missing[:MAX_NAMED])}{more} (expected <case>_segFromPrevStage.npy; train and validate "
                f"every fold of 3d_lowres first, each writes its validation cases there)"
            )
        return train_keys, val_keys

    def network_input(self, case_id: str, data: np.ndarray) -> np.ndarray:
        """Image channels followed by the one-hot previous-stage segmentation (validation)."""
        seg = load_prev_stage_seg(self.prev_stage_folder, case_id, data.shape[1:])
        return np.concatenate([np.asarray(data, dtype=np.float32), onehot_foreground(seg, self.num_classes)])
