"""Mirroring test-time augmentation (spec §8.2): which flips to run and how to undo them.

A mirror *combination* is a tuple of spatial axes (0 = first spatial axis of the network input) flipped
together; TTA runs every subset of the allowed axes, including the empty one (no flip), i.e.
``2 ** len(mirror_axes)`` network passes, and averages the softmax of the flipped-back predictions.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch


def validate_mirror_axes(mirror_axes: Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """Check and normalise TTA mirror axes.

    Args:
        mirror_axes: Spatial axes that may be flipped (None or empty: no TTA).
        ndim: Number of spatial dimensions of the network input (2 or 3).

    Returns:
        The axes as a sorted tuple without duplicates.

    Raises:
        ValueError: An axis is outside ``[0, ndim)``.
    """
    axes = tuple(sorted({int(a) for a in (mirror_axes or ())}))
    bad = [a for a in axes if not 0 <= a < ndim]
    if bad:
        raise ValueError(f"mirror axes {bad} out of range for {ndim}D network input (allowed 0..{ndim - 1})")
    return axes


def mirror_combinations(mirror_axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """All flip combinations of ``mirror_axes``, the identity first.

    Args:
        mirror_axes: Spatial axes that may be flipped.

    Returns:
        ``2 ** len(axes)`` tuples of spatial axes, ordered by size then lexicographically: for ``(0, 1, 2)``
        ``[(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]``.
    """
    axes = tuple(sorted({int(a) for a in (mirror_axes or ())}))
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def tensor_dims(combo: Sequence[int], leading: int) -> tuple[int, ...]:
    """Tensor dimensions of spatial axes ``combo`` in a tensor with ``leading`` non-spatial dimensions."""
    return tuple(a + leading for a in combo)


def flip(x: torch.Tensor, combo: Sequence[int], leading: int) -> torch.Tensor:
    """Flip the spatial axes ``combo`` of ``x`` (identity returns ``x`` itself, no copy).

    Args:
        x: Tensor whose first ``leading`` dimensions are not spatial (e.g. 2 for ``(B, C, *spatial)``).
        combo: Spatial axes to flip.
        leading: Number of non-spatial leading dimensions.
    """
    if not combo:
        return x
    return torch.flip(x, tensor_dims(combo, leading))
