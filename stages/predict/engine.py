"""Probabilities of one preprocessed case from one or several trained networks (spec §8.1-§8.3).

The single code path shared by the final validation of training and by ``nnUNet_predict``: sliding window
with Gaussian weighting, mirroring TTA, and the average over the folds' networks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from stages.plan.models import StagePlan
from stages.predict.sliding_window import predict_sliding_window


def mirror_axes_for(dimension: str) -> tuple[int, ...]:
    """Axes the trainer mirrors in augmentation, hence in TTA: (0, 1, 2) for 3D, (0, 1) for 2D (spec §7.1)."""
    return (0, 1) if dimension == "2d" else (0, 1, 2)


def predict_preprocessed(
    networks: Sequence[torch.nn.Module],
    data: np.ndarray,
    stage_plan: StagePlan,
    dimension: str,
    num_classes: int,
    mirror_axes: Sequence[int] = (),
    step_size: float = 0.5,
    device: torch.device | str | None = None,
    amp: bool = False,
) -> np.ndarray:
    """Mean softmax of ``networks`` over a preprocessed case ``(C, z, y, x)``; float32 ``(K, z, y, x)``.

    Args:
        networks: One network per fold (weights loaded), all of the same configuration.
        data: The preprocessed case (transposed, resampled, normalized).
        stage_plan: The configuration's plan (patch size).
        dimension: ``"2d"`` (slice-wise on 3D data) or ``"3d"``.
        num_classes: Output classes incl. background.
        mirror_axes: Mirroring TTA axes; empty disables TTA.
        step_size: Sliding-window stride as a fraction of the patch.
        device: Compute device (default: the network's).
        amp: Autocast on CUDA.
    """
    total: np.ndarray | None = None
    for net in networks:
        probs = predict_sliding_window(net, data, stage_plan.patch_size, num_classes, mirror_axes, step_size,
                                       True, device, amp)
        total = probs if total is None else total + probs
    if total is None:
        raise ValueError("no network to predict with")
    if len(networks) > 1:
        total /= len(networks)
    return total
