"""Foreground-location sampling for oversampling during training (spec §4.5).

For every foreground class, in the order given, up to ``max(min(10000, count), ceil(0.01 * count))`` voxel
coordinates of that class are drawn without replacement with one ``RandomState(1234)`` per case, so the result
is deterministic and equal to nnU-Net v1's. Coordinates are in the array order of the (transposed, resampled)
segmentation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

NUM_SAMPLES = 10000
MIN_PERCENT_COVERAGE = 0.01
SEED = 1234


def num_locations(count: int) -> int:
    """How many locations are kept of ``count`` voxels of a class."""
    return max(min(NUM_SAMPLES, count), int(math.ceil(count * MIN_PERCENT_COVERAGE)))


def sample_class_locations(seg: np.ndarray, classes: Iterable[int], seed: int = SEED) -> dict[int, np.ndarray]:
    """Sample voxel coordinates per class.

    Args:
        seg: Spatial label map (no channel axis).
        classes: Foreground classes, visited in this order (the random stream depends on it).
        seed: Seed of the per-case ``RandomState``.

    Returns:
        ``{class: int array (n, seg.ndim)}``; classes absent from ``seg`` map to an empty ``(0, ndim)`` array.
    """
    rnd = np.random.RandomState(seed)
    out: dict[int, np.ndarray] = {}
    for c in classes:
        locs = np.argwhere(seg == c)
        if len(locs) == 0:
            out[int(c)] = np.zeros((0, seg.ndim), dtype=np.int64)
            continue
        chosen = rnd.choice(len(locs), num_locations(len(locs)), replace=False)
        out[int(c)] = locs[chosen]
    return out
