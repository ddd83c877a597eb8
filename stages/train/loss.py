"""Training loss of nnUNetTrainerV2 (spec §6.4): soft Dice + cross-entropy, summed over deep-supervision outputs.

Targets are label maps shaped ``(B, 1, *spatial)`` with values ``0..K-1`` (any dtype); logits are
``(B, K, *spatial)``. The Dice term is negative (``-mean Dice``), so the total loss typically is too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from stages.errors import BadInputError

DICE_SMOOTH = 1e-5
DICE_EPS = 1e-8

BatchReduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums the batch-summed ``(3, K)`` tp/fp/fn across processes, keeping the gradient (DDP batch Dice)."""


def all_reduce_with_grad(stats: torch.Tensor) -> torch.Tensor:
    """Sum ``stats`` over all DDP ranks with autograd support; unchanged if torch.distributed is not initialised.

    Use as ``batch_reduce`` of :class:`SoftDiceLoss` so that every rank computes the Dice of the global batch
    (spec §12). The backward pass sums the incoming gradients over the ranks, like nnU-Net v1's
    ``AllGatherGrad``; DDP's gradient averaging then yields the gradient of the global Dice. Every rank must
    call it. Unlike gathering per-sample values, summing also works when ranks hold different batch sizes.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return stats
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(stats, op=dist.ReduceOp.SUM)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is half precision (AMP), else unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def one_hot(target: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """One-hot ``(B, K, *spatial)`` of a ``(B, 1, *spatial)`` label map, in ``dtype``.

    Raises:
        BadInputError: If the target is not shaped ``(B, 1, ...)``.
    """
    if target.ndim < 3 or target.shape[1] != 1:
        raise BadInputError(f"loss: target must be a label map shaped (B, 1, ...), got {tuple(target.shape)}")
    shape = (target.shape[0], num_classes, *target.shape[2:])
    out = torch.zeros(shape, dtype=dtype, device=target.device)
    return out.scatter_(1, target.long(), 1)


class SoftDiceLoss(nn.Module):
    """Soft Dice on softmax probabilities, background excluded, returned as ``-mean(dice)`` (spec §6.4).

    Per class ``dc = (2 tp + smooth) / (2 tp + fp + fn + smooth + 1e-8)`` with ``tp = sum p y``,
    ``fp = sum p (1 - y)``, ``fn = sum (1 - p) y``.

    Args:
        batch_dice: Sum tp/fp/fn over batch and space (one Dice per class); else one Dice per sample and class.
        do_bg: Include the background class (nnU-Net: False).
        smooth: Added to numerator and denominator.
        batch_reduce: With ``batch_dice``, applied to the batch-summed ``(3, K)`` tp/fp/fn before the ratio,
            e.g. :func:`all_reduce_with_grad` so that DDP ranks share one batch Dice (spec §12); None for a
            single process.
    """

    def __init__(
        self,
        batch_dice: bool,
        do_bg: bool = False,
        smooth: float = DICE_SMOOTH,
        batch_reduce: BatchReduce | None = None,
    ) -> None:
        super().__init__()
        self.batch_dice = batch_dice
        self.do_bg = do_bg
        self.smooth = smooth
        self.batch_reduce = batch_reduce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``(B, K, ...)`` against a label map ``(B, 1, ...)``."""
        probs = torch.softmax(_at_least_fp32(logits), dim=1)
        y = one_hot(target, probs.shape[1], probs.dtype)
        axes = tuple(range(2, probs.ndim))
        tp = (probs * y).sum(axes)
        # sum p(1-y) = sum p - tp and sum (1-p)y = sum y - tp, without two more full-size temporaries
        fp = probs.sum(axes) - tp
        fn = y.sum(axes) - tp
        if self.batch_dice:
            tp, fp, fn = tp.sum(0), fp.sum(0), fn.sum(0)
            if self.batch_reduce is not None:
                tp, fp, fn = self.batch_reduce(torch.stack((tp, fp, fn))).unbind(0)
        dc = (2 * tp + self.smooth) / (2 * tp + fp + fn + self.smooth + DICE_EPS)
        if not self.do_bg:
            dc = dc[..., 1:]
        return -dc.mean()


class DCandCELoss(nn.Module):
    """``CE + SoftDice`` with weights 1:1 (nnU-Net's ``DC_and_CE_loss``).

    Args:
        batch_dice: Passed to :class:`SoftDiceLoss`.
        weight_ce: Weight of the cross-entropy term.
        weight_dice: Weight of the Dice term.
        batch_reduce: Passed to :class:`SoftDiceLoss` (DDP batch Dice).
    """

    def __init__(
        self,
        batch_dice: bool,
        weight_ce: float = 1.0,
        weight_dice: float = 1.0,
        batch_reduce: BatchReduce | None = None,
    ) -> None:
        super().__init__()
        self.dice = SoftDiceLoss(batch_dice=batch_dice, batch_reduce=batch_reduce)
        self.weight_ce = weight_ce
        self.weight_dice = weight_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``(B, K, ...)`` against a label map ``(B, 1, ...)``."""
        if target.ndim != logits.ndim or target.shape[1] != 1:
            raise BadInputError(
                f"loss: target {tuple(target.shape)} must be shaped (B, 1, ...) to match logits {tuple(logits.shape)}"
            )
        ce = nn.functional.cross_entropy(_at_least_fp32(logits), target[:, 0].long())
        return self.weight_ce * ce + self.weight_dice * self.dice(logits, target)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of a loss over the deep-supervision outputs (``MultipleOutputLoss2``).

    Outputs with weight 0 (the coarsest) are not evaluated at all.

    Args:
        loss: Loss of one (logits, target) pair.
        weights: One weight per output, full resolution first (see :func:`deep_supervision_weights`).
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float]) -> None:
        super().__init__()
        self.loss = loss
        self.weights = [float(w) for w in weights]

    def forward(self, outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sum of ``w_i * loss(outputs[i], targets[i])``.

        Raises:
            BadInputError: If the number of outputs, targets and weights differ.
        """
        if not len(outputs) == len(targets) == len(self.weights):
            raise BadInputError(
                f"deep supervision: {len(outputs)} outputs, {len(targets)} targets, {len(self.weights)} weights"
            )
        total = self.weights[0] * self.loss(outputs[0], targets[0])
        for w, out, tgt in zip(self.weights[1:], outputs[1:], targets[1:], strict=True):
            if w != 0:
                total = total + w * self.loss(out, tgt)
        return total


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """Weights ``1/2^i`` with the coarsest output at 0, normalized to sum 1 (5 -> .533, .267, .133, .067, 0).

    A single output gets weight 1.
    """
    if num_outputs < 1:
        raise BadInputError(f"deep supervision: need at least one output, got {num_outputs}")
    raw = [1 / 2**i for i in range(num_outputs)]
    if num_outputs > 1:
        raw[-1] = 0.0
    total = sum(raw)
    return [w / total for w in raw]


def deep_supervision_scales(pool_op_kernel_sizes: Sequence[Sequence[int]]) -> list[list[float]]:
    """Per-output target scales: ``[1, ...]`` then ``1 / cumprod(pool kernels)``, without the last one.

    One entry per deep-supervision output (``num_pool``), each with one factor per spatial axis.
    """
    if len(pool_op_kernel_sizes) == 0:
        raise BadInputError("deep supervision: pool_op_kernel_sizes is empty")
    pools = np.asarray(pool_op_kernel_sizes, dtype=np.float64)
    coarser = 1.0 / np.cumprod(pools, axis=0)
    return [[1.0] * pools.shape[1]] + [[float(v) for v in row] for row in coarser[:-1]]


def batch_dice_for(configuration: str, plans_has_cascade: bool) -> bool:
    """Whether a configuration trains with batch Dice (spec §6.4).

    ``2d``: yes; ``3d_fullres`` / ``3d_cascade_fullres``: only if the plans have a cascade; ``3d_lowres``: no.

    Raises:
        BadInputError: For an unknown configuration name.
    """
    if configuration == "2d":
        return True
    if configuration in ("3d_fullres", "3d_cascade_fullres"):
        return plans_has_cascade
    if configuration == "3d_lowres":
        return False
    raise BadInputError(
        f"unknown configuration {configuration!r} (expected 2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres)"
    )
