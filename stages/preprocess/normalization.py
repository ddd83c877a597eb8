"""Per-modality intensity normalization (spec §4.3): ``CT``, ``nonCT`` (z-score) and ``noNorm``.

``CT`` clips to the dataset-foreground 0.5/99.5 percentiles and standardizes with the dataset-foreground mean and
sd. ``nonCT`` standardizes each image with its own mean and sd, inside the nonzero mask (``seg >= 0``) when that
modality's mask flag is set, in which case voxels outside the mask become 0. ``noNorm`` leaves the values as
they are. Statistics are computed in float64; the data stay float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from stages.errors import BadInputError
from stages.plan.models import IntensityStats

Z_SCORE_EPS = 1e-8


def _z_score(values: np.ndarray) -> np.ndarray:
    mean = values.mean(dtype=np.float64)
    std = values.std(dtype=np.float64)
    return ((values - mean) / (std + Z_SCORE_EPS)).astype(np.float32, copy=False)


def normalize_channel(
    img: np.ndarray,
    scheme: str,
    use_mask: bool,
    mask: np.ndarray | None,
    stats: IntensityStats | None = None,
) -> np.ndarray:
    """Normalize one modality.

    Args:
        img: Spatial float array of one modality.
        scheme: ``"CT"``, ``"nonCT"`` or ``"noNorm"``.
        use_mask: Normalize inside the nonzero mask only and zero the outside.
        mask: Boolean nonzero mask (``seg >= 0``); required when ``use_mask``.
        stats: Dataset-foreground statistics of this modality; required for ``CT``.

    Returns:
        The normalized float32 array (a new array).
    """
    if use_mask and mask is None and scheme != "noNorm":
        raise ValueError("normalization inside the nonzero mask needs the mask")
    img = img.astype(np.float32, copy=True)
    if scheme == "CT":
        if stats is None:
            raise BadInputError("CT normalization needs the dataset's intensity statistics (missing in the plans)")
        np.clip(img, stats.percentile_00_5, stats.percentile_99_5, out=img)
        img = ((img - stats.mean) / stats.sd).astype(np.float32, copy=False)
        if use_mask:
            img[~mask] = 0
    elif scheme == "nonCT":
        if use_mask:
            if mask.any():
                img[mask] = _z_score(img[mask])
            img[~mask] = 0
        else:
            img = _z_score(img)
    elif scheme != "noNorm":
        raise BadInputError(f"unknown normalization scheme {scheme!r} (expected CT, nonCT or noNorm)")
    return img


def normalize(
    data: np.ndarray,
    seg: np.ndarray | None,
    schemes: Mapping[int, str],
    use_mask_for_norm: Mapping[int, bool],
    intensity_properties: Mapping[int, IntensityStats] | None = None,
) -> np.ndarray:
    """Normalize every channel of ``data`` (spec §4.3).

    Args:
        data: ``(C, *spatial)`` image channels.
        seg: ``(1, *spatial)`` segmentation whose last channel gives the nonzero mask (``>= 0``); may be None
            only if no channel uses the mask.
        schemes: Scheme per channel index.
        use_mask_for_norm: Mask flag per channel index.
        intensity_properties: Dataset-foreground statistics per channel (needed for ``CT`` channels).

    Returns:
        A new float32 ``(C, *spatial)`` array.
    """
    mask = None if seg is None else seg[-1] >= 0
    out = np.empty(data.shape, dtype=np.float32)
    for c in range(data.shape[0]):
        if c not in schemes:
            raise BadInputError(f"no normalization scheme for channel {c} (plans list {sorted(schemes)})")
        stats = (intensity_properties or {}).get(c)
        out[c] = normalize_channel(data[c], schemes[c], bool(use_mask_for_norm.get(c, False)), mask, stats)
    return out
