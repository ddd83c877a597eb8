"""Network topology (spec §3.4) and the memory proxy (spec §3.5)."""

from __future__ import annotations

import pytest

from stages.plan.topology import compute_approx_vram_consumption, get_pool_and_conv_props, pad_shape


def test_isotropic_hippocampus_patch():
    topo = get_pool_and_conv_props([1.0, 1.0, 1.0], [36, 50, 35])
    # 36 -> 18 -> 9 -> 5, 50 -> 25 -> 13 -> 7, 35 -> 18 -> 9 -> 5: three poolings each, then < 8 stops.
    assert topo.num_pool_per_axis == [3, 3, 3]
    assert topo.pool_op_kernel_sizes == [[2, 2, 2]] * 3
    assert topo.conv_kernel_sizes == [[3, 3, 3]] * 4
    assert topo.must_be_divisible_by == [8, 8, 8]
    assert topo.patch_size == [40, 56, 40]


def test_spacing_ratio_two_is_not_similar():
    # ratio exactly 2 is not "< 2": the coarse axis neither pools nor gets a 3-kernel in the first stage
    topo = get_pool_and_conv_props([2.0, 1.0, 1.0], [64, 64, 64])
    assert topo.pool_op_kernel_sizes[0] == [1, 2, 2]
    assert topo.conv_kernel_sizes[0] == [1, 3, 3]
    # afterwards all spacings are 2: every axis pools; sizes [64,32,32] -> ... axis 0 pools once more at the end
    assert topo.pool_op_kernel_sizes[1] == [2, 2, 2]
    assert topo.conv_kernel_sizes[1] == [3, 3, 3]
    assert topo.pool_op_kernel_sizes[-1] == [2, 1, 1]
    assert topo.num_pool_per_axis == [4, 4, 4]
    assert topo.must_be_divisible_by == [16, 16, 16]
    assert len(topo.conv_kernel_sizes) == len(topo.pool_op_kernel_sizes) + 1
    assert topo.conv_kernel_sizes[-1] == [3, 3, 3]


def test_min_edge_and_pool_cap():
    topo = get_pool_and_conv_props([1.0, 1.0], [8, 7])
    assert topo.num_pool_per_axis == [1, 0]  # 8 >= 2*4 pools once, 7 never
    assert topo.patch_size == [8, 7]
    capped = get_pool_and_conv_props([1.0, 1.0], [64, 64], max_numpool=2)
    assert capped.num_pool_per_axis == [2, 2]
    assert capped.must_be_divisible_by == [4, 4]


def test_pad_shape_keeps_exact_multiples():
    assert pad_shape([40, 56, 40], [8, 8, 8]) == [40, 56, 40]
    assert pad_shape([36, 50, 35], [8, 8, 8]) == [40, 56, 40]
    assert pad_shape([20, 319], [4, 64]) == [20, 320]
    with pytest.raises(ValueError):
        pad_shape([1, 2], [1])


def test_vram_proxy_matches_formula():
    # 40x56x40 patch, 3 poolings, B=32, maxF=320, C=1, K=3
    p0 = 40 * 56 * 40
    expected = 5 * p0 * 32 + 1 * p0 + 3 * p0
    expected += 5 * (20 * 28 * 20) * 64  # p=1
    expected += 5 * (10 * 14 * 10) * 128  # p=2
    expected += 2 * (5 * 7 * 5) * 256  # bottleneck p=3
    got = compute_approx_vram_consumption([40, 56, 40], [[2, 2, 2]] * 3, 32, 320, 1, 3)
    assert got == expected


def test_vram_proxy_caps_features_and_uses_per_stage_strides():
    # 2 poolings with anisotropic strides; F capped at 80
    expected = 5 * (8 * 32 * 32) * 40 + 2 * (8 * 32 * 32) + 4 * (8 * 32 * 32)
    expected += 5 * (8 * 16 * 16) * 80
    expected += 2 * (4 * 8 * 8) * 80
    got = compute_approx_vram_consumption([8, 32, 32], [[1, 2, 2], [2, 2, 2]], 40, 80, 2, 4)
    assert got == expected
