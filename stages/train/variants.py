"""Built-in trainer variants, selectable by name like nnU-Net's (``nnUNetTrainerV2_5epochs`` ...).

A variant is a subclass that changes :attr:`default_config` or a hook; defining the subclass registers it.
Users add their own the same way in a module they import before training.
"""

from __future__ import annotations

from stages.train.trainer import nnUNetTrainerV2


class nnUNetTrainerV2_5epochs(nnUNetTrainerV2):  # noqa: N801
    """5 epochs (the expected-epoch-time protocol's trainer)."""

    default_config = {"max_epochs": 5}


class nnUNetTrainerV2_10epochs(nnUNetTrainerV2):  # noqa: N801
    """10 epochs."""

    default_config = {"max_epochs": 10}


class nnUNetTrainerV2_50epochs(nnUNetTrainerV2):  # noqa: N801
    """50 epochs."""

    default_config = {"max_epochs": 50}


class nnUNetTrainerV2_100epochs(nnUNetTrainerV2):  # noqa: N801
    """100 epochs."""

    default_config = {"max_epochs": 100}


class nnUNetTrainerV2_DDP(nnUNetTrainerV2):  # noqa: N801
    """Name kept for nnU-Net v1 users: DDP is the same trainer launched through torchrun."""


class nnUNetTrainerV2_DP(nnUNetTrainerV2):  # noqa: N801
    """nnU-Net v1's DataParallel trainer, mapped onto DDP."""
