"""Optimizer and learning-rate schedule of nnUNetTrainerV2 (spec §6.1).

SGD with Nesterov momentum 0.99 and weight decay 3e-5; poly learning rate
``lr(e) = initial_lr * (1 - e / max_epochs) ** 0.9``, set at the start of training for the current epoch and after
every epoch for ``epoch + 1``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from stages.errors import BadInputError

INITIAL_LR = 0.01
POLY_EXPONENT = 0.9
WEIGHT_DECAY = 3e-5
MOMENTUM = 0.99
GRAD_CLIP_NORM = 12.0
"""Global L2 norm the gradients are clipped to (after AMP unscaling)."""


def poly_lr(epoch: int, max_epochs: int, initial_lr: float = INITIAL_LR, exponent: float = POLY_EXPONENT) -> float:
    """Poly learning rate ``initial_lr * (1 - epoch / max_epochs) ** exponent``.

    Args:
        epoch: Epoch index, ``0 <= epoch <= max_epochs``.
        max_epochs: Total number of epochs.
        initial_lr: Learning rate at epoch 0.
        exponent: Poly exponent.

    Raises:
        BadInputError: If ``max_epochs < 1`` or the epoch is outside ``[0, max_epochs]``.
    """
    if max_epochs < 1:
        raise BadInputError(f"poly_lr: max_epochs must be >= 1, got {max_epochs}")
    if not 0 <= epoch <= max_epochs:
        raise BadInputError(f"poly_lr: epoch {epoch} outside [0, {max_epochs}]")
    return initial_lr * (1 - epoch / max_epochs) ** exponent


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    lr: float = INITIAL_LR,
    weight_decay: float = WEIGHT_DECAY,
    momentum: float = MOMENTUM,
    nesterov: bool = True,
) -> torch.optim.SGD:
    """SGD as nnUNetTrainerV2 configures it (Nesterov, momentum 0.99, weight decay 3e-5, lr 0.01)."""
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def set_momentum(optimizer: torch.optim.Optimizer, momentum: float) -> None:
    """Set the momentum of every parameter group (the epoch-100 safeguard lowers it to 0.95)."""
    for group in optimizer.param_groups:
        group["momentum"] = momentum
