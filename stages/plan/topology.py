"""U-Net topology from voxel spacing and patch size, and the planner's memory proxy (spec §3.4, §3.5).

The topology pools (stride 2) every axis whose spacing is within a factor 2 of the currently finest spacing and
that is still at least twice the minimal bottleneck edge long; convolution kernels are 3 on the largest group of
axes with mutually similar spacing and 1 elsewhere. The memory proxy is a unitless count of activations that
the planners compare with a reference value to size patches and batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Topology:
    """Result of :func:`get_pool_and_conv_props`.

    Attributes:
        num_pool_per_axis: Number of stride-2 poolings per axis.
        pool_op_kernel_sizes: Per pooling stage, the stride per axis (2 or 1).
        conv_kernel_sizes: Per resolution stage (pooling stages + bottleneck), the kernel size per axis.
        patch_size: The patch padded up to a multiple of ``must_be_divisible_by``.
        must_be_divisible_by: ``2 ** num_pool_per_axis``.
    """

    num_pool_per_axis: list[int]
    pool_op_kernel_sizes: list[list[int]]
    conv_kernel_sizes: list[list[int]]
    patch_size: list[int]
    must_be_divisible_by: list[int]


def pad_shape(shape: Sequence[int], divisor: Sequence[int]) -> list[int]:
    """Round every entry of ``shape`` up to the next multiple of ``divisor`` (exact multiples are kept)."""
    if len(shape) != len(divisor):
        raise ValueError(f"shape {list(shape)} and divisor {list(divisor)} differ in length")
    return [int(-(-int(s) // int(d)) * int(d)) for s, d in zip(shape, divisor)]


def get_pool_and_conv_props(
    spacing: Sequence[float],
    patch_size: Sequence[int],
    min_feature_map_size: int = 4,
    max_numpool: int = 999,
) -> Topology:
    """Network topology for a patch at a spacing (spec §3.4).

    Args:
        spacing: Voxel spacing per axis.
        patch_size: Patch size per axis (voxels).
        min_feature_map_size: Smallest edge length allowed in the bottleneck.
        max_numpool: Cap on poolings per axis.

    Returns:
        The :class:`Topology`, with the patch padded to the divisibility the poolings require.
    """
    dim = len(spacing)
    if len(patch_size) != dim:
        raise ValueError(f"spacing {list(spacing)} and patch {list(patch_size)} differ in length")
    current_spacing = [float(s) for s in spacing]
    current_size = [float(s) for s in patch_size]
    num_pool = [0] * dim
    pool_kernels: list[list[int]] = []
    conv_kernels: list[list[int]] = []
    while True:
        min_spacing = min(current_spacing)
        valid = [i for i in range(dim) if current_spacing[i] / min_spacing < 2]
        conv_axes: list[int] = []
        for a in range(dim):
            mine = current_spacing[a]
            partners = [i for i in range(dim) if current_spacing[i] / mine < 2 and mine / current_spacing[i] < 2]
            if len(partners) > len(conv_axes):
                conv_axes = partners
        conv_kernel = [3 if i in conv_axes else 1 for i in range(dim)]
        valid = [i for i in valid if current_size[i] >= 2 * min_feature_map_size and num_pool[i] < max_numpool]
        if not valid:
            break
        kernel = [1] * dim
        for v in valid:
            kernel[v] = 2
            num_pool[v] += 1
            current_spacing[v] *= 2
            current_size[v] = float(np.ceil(current_size[v] / 2))
        pool_kernels.append(kernel)
        conv_kernels.append(conv_kernel)
    divisor = [2**n for n in num_pool]
    conv_kernels.append([3] * dim)
    return Topology(num_pool, pool_kernels, conv_kernels, pad_shape(patch_size, divisor), divisor)


def compute_approx_vram_consumption(
    patch_size: Sequence[int],
    pool_op_kernel_sizes: Sequence[Sequence[int]],
    base_num_features: int,
    max_num_features: int,
    num_modalities: int,
    num_classes: int,
    conv_per_stage: int = 2,
) -> int:
    """Activation-count proxy of a U-Net's training memory (spec §3.5; no deep supervision).

    Args:
        patch_size: Patch size per axis.
        pool_op_kernel_sizes: Per pooling stage, the stride per axis.
        base_num_features: Feature maps of the first stage.
        max_num_features: Cap on feature maps.
        num_modalities: Input channels.
        num_classes: Output channels including background.
        conv_per_stage: Convolutions per encoder/decoder stage.

    Returns:
        The unitless estimate (an integer).
    """
    map_size = np.array(patch_size, dtype=np.int64)
    voxels = int(np.prod(map_size, dtype=np.int64))
    total = (conv_per_stage * 2 + 1) * voxels * base_num_features + num_modalities * voxels + num_classes * voxels
    num_feat = base_num_features
    npool = len(pool_op_kernel_sizes)
    for p, kernel in enumerate(pool_op_kernel_sizes):
        map_size = map_size // np.asarray(kernel, dtype=np.int64)
        num_feat = min(num_feat * 2, max_num_features)
        num_blocks = (conv_per_stage * 2 + 1) if p < npool - 1 else conv_per_stage
        total += num_blocks * int(np.prod(map_size, dtype=np.int64)) * num_feat
    return int(total)
