"""Online evaluation during training (spec §6.5): global foreground Dice and its moving average.

Each validation batch adds hard (argmax) TP/FP/FN per foreground class of the full-resolution output to running
counts; at the end of the epoch the counts give one "global" Dice per class (all patches treated as one volume),
classes whose Dice is undefined are dropped and the rest averaged. :class:`EmaTracker` keeps
``0.9 * previous + 0.1 * current`` of that number and says when it reaches a new best (the ``model_best``
checkpoint).

Counts stay on the device of the network output, so no batch forces a host synchronisation; under DDP
:func:`all_reduce_sum` adds them up across ranks when the epoch finishes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from stages.errors import BadInputError

EMA_ALPHA = 0.9

CountsReduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums a counts tensor across processes and returns it."""


def all_reduce_sum(counts: torch.Tensor) -> torch.Tensor:
    """Sum ``counts`` in place over all ranks if torch.distributed is initialised (else return it unchanged).

    Every rank must call it (it is a collective). With the NCCL backend the tensor must live on the GPU.
    """
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return counts


def dice_from_counts(tp: Sequence[float], fp: Sequence[float], fn: Sequence[float]) -> list[float]:
    """Per-class ``2TP / (2TP + FP + FN)``; NaN where the class is absent from target and prediction."""
    return [2 * a / (2 * a + b + c) if (2 * a + b + c) > 0 else math.nan for a, b, c in zip(tp, fp, fn, strict=True)]


def nan_mean(values: Sequence[float]) -> float:
    """Mean of the non-NaN values; NaN if there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


@dataclass(frozen=True)
class OnlineEvalResult:
    """One epoch's online evaluation.

    Attributes:
        tp: True positives per foreground class (class 1 first).
        fp: False positives per foreground class.
        fn: False negatives per foreground class.
        per_class_dice: Global Dice per foreground class, NaN where undefined.
        mean_fg_dice: Mean of the defined per-class Dice values ("Average global foreground Dice"); NaN if none.
    """

    tp: list[int]
    fp: list[int]
    fn: list[int]
    per_class_dice: list[float]
    mean_fg_dice: float


class OnlineEvaluator:
    """Accumulates hard TP/FP/FN per foreground class over the validation batches of one epoch.

    Args:
        num_classes: Classes including background (network output channels).
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise BadInputError(f"online evaluation: need background plus at least one class, got {num_classes}")
        self.num_classes = num_classes
        self.counts: torch.Tensor | None = None  # (3, num_classes - 1) int64: tp, fp, fn

    def reset(self) -> None:
        """Forget the counts (start of an epoch)."""
        self.counts = None

    @torch.no_grad()
    def update(self, output: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> None:
        """Add one batch.

        Args:
            output: Full-resolution logits ``(B, K, *spatial)``, or a deep-supervision tuple (its first element
                is used).
            target: Label map ``(B, 1, *spatial)`` (or ``(B, *spatial)``). Values outside ``1..K-1`` (e.g. the
                -1 outside-mask marker) count as background, as in nnU-Net v1 where -1 is mapped to 0.

        Raises:
            BadInputError: If the shapes do not fit together.
        """
        logits = output if isinstance(output, torch.Tensor) else output[0]
        if logits.shape[1] != self.num_classes:
            raise BadInputError(
                f"online evaluation: output has {logits.shape[1]} channels, expected {self.num_classes}"
            )
        labels = target[:, 0] if target.ndim == logits.ndim else target
        if labels.shape != logits.shape[:1] + logits.shape[2:]:
            raise BadInputError(
                f"online evaluation: target {tuple(target.shape)} does not match output {tuple(logits.shape)}"
            )
        pred = logits.argmax(1)
        labels = labels.to(device=pred.device)
        shape = (self.num_classes - 1,) + (1,) * pred.ndim
        classes = torch.arange(1, self.num_classes, device=pred.device).view(shape)
        is_pred = pred.unsqueeze(0) == classes
        is_true = labels.unsqueeze(0) == classes
        dims = tuple(range(1, is_pred.ndim))
        tp = (is_pred & is_true).sum(dims)
        batch = torch.stack((tp, is_pred.sum(dims) - tp, is_true.sum(dims) - tp))
        self.counts = batch if self.counts is None else self.counts + batch

    def finish(self, reduce: CountsReduce | None = all_reduce_sum) -> OnlineEvalResult:
        """Global Dice of the accumulated counts; resets the accumulator.

        Args:
            reduce: Applied to the ``(3, K-1)`` counts before the Dice is computed; the default sums across DDP
                ranks when torch.distributed is initialised (then every rank must call ``finish``, even one that
                saw no batch) and does nothing otherwise. None: no reduction.
        """
        counts = self.counts
        if counts is None:
            counts = torch.zeros((3, self.num_classes - 1), dtype=torch.int64)
            if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
                counts = counts.cuda()
        if reduce is not None:
            counts = reduce(counts)
        tp, fp, fn = (row.tolist() for row in counts.cpu())
        self.reset()
        per_class = dice_from_counts(tp, fp, fn)
        return OnlineEvalResult(tp=tp, fp=fp, fn=fn, per_class_dice=per_class, mean_fg_dice=nan_mean(per_class))

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (counts as nested lists, or None)."""
        counts = None if self.counts is None else self.counts.cpu().tolist()
        return {"num_classes": self.num_classes, "counts": counts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (counts go to the CPU; later batches move them as needed)."""
        if state.get("num_classes") != self.num_classes:
            raise BadInputError(
                f"online evaluation state is for {state.get('num_classes')} classes, not {self.num_classes}"
            )
        counts = state.get("counts")
        self.counts = None if counts is None else torch.tensor(counts, dtype=torch.int64)


def _json_float(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


class EmaTracker:
    """Moving average ``alpha * previous + (1 - alpha) * current`` of the epoch metric and its best value.

    The first value initialises the average. A NaN value (no foreground anywhere in the epoch's validation
    patches) is recorded in the history but leaves the average untouched; nnU-Net v1 would let it poison the
    average for the rest of training.

    Args:
        alpha: Weight of the previous average.
    """

    def __init__(self, alpha: float = EMA_ALPHA) -> None:
        self.alpha = alpha
        self.ema: float | None = None
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.history: list[float] = []

    def update(self, value: float, epoch: int) -> bool:
        """Add one epoch's metric; True if the average is a new best (always True for the first defined value).

        Args:
            value: The epoch's mean global foreground Dice.
            epoch: Epoch index (recorded as ``best_epoch``).
        """
        self.history.append(float(value))
        if math.isnan(value):
            return False
        self.ema = float(value) if self.ema is None else self.alpha * self.ema + (1 - self.alpha) * float(value)
        if self.best is None or self.ema > self.best:
            self.best = self.ema
            self.best_epoch = epoch
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (NaN written as None)."""
        return {
            "alpha": self.alpha,
            "ema": _json_float(self.ema),
            "best": _json_float(self.best),
            "best_epoch": self.best_epoch,
            "history": [_json_float(v) for v in self.history],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> EmaTracker:
        """Rebuild a tracker from :meth:`state_dict` output."""
        tracker = cls(alpha=float(state["alpha"]))
        tracker.ema = state.get("ema")
        tracker.best = state.get("best")
        tracker.best_epoch = state.get("best_epoch")
        tracker.history = [math.nan if v is None else float(v) for v in state.get("history", [])]
        return tracker
