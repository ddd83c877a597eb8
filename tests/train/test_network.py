from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stages.errors import BadInputError
from stages.plan.models import StagePlan
from stages.train.loss import deep_supervision_scales
from stages.train.network import GenericUNet, build_network


def stage_plan(patch: list[int], pools: list[list[int]], kernels: list[list[int]]) -> StagePlan:
    ndim = len(patch)
    return StagePlan(
        batch_size=2,
        num_pool_per_axis=[sum(1 for p in pools if p[a] == 2) for a in range(ndim)],
        patch_size=patch,
        median_patient_size_in_voxels=patch,
        current_spacing=[1.0] * ndim,
        original_spacing=[1.0] * ndim,
        do_dummy_2D_data_aug=False,
        pool_op_kernel_sizes=pools,
        conv_kernel_sizes=kernels,
    )


HIPPO = stage_plan([40, 56, 40], [[2, 2, 2]] * 3, [[3, 3, 3]] * 4)
ANISO = stage_plan([8, 32, 24], [[1, 2, 2], [2, 2, 2], [2, 2, 2]], [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]])


def expected_shapes(plan: StagePlan, batch: int, classes: int) -> list[tuple[int, ...]]:
    scales = deep_supervision_scales(plan.pool_op_kernel_sizes)
    return [(batch, classes, *(round(p * s) for p, s in zip(plan.patch_size, sc))) for sc in scales]


@pytest.mark.parametrize("plan", [HIPPO, ANISO], ids=["hippocampus", "anisotropic"])
def test_3d_deep_supervision_outputs_match_scales(plan):
    net = build_network(plan, num_input_channels=2, num_classes_with_bg=3, dimension="3d")
    with torch.no_grad():
        out = net(torch.randn(1, 2, *plan.patch_size))
    assert isinstance(out, tuple)
    assert len(out) == plan.num_pool
    assert [tuple(o.shape) for o in out] == expected_shapes(plan, 1, 3)


def test_do_ds_false_returns_the_full_resolution_output_only():
    net = build_network(ANISO, num_input_channels=1, num_classes_with_bg=3, dimension="3d")
    x = torch.randn(1, 1, *ANISO.patch_size)
    with torch.no_grad():
        out = net(x)
        net.do_ds = False
        full = net(x)
    assert isinstance(full, torch.Tensor)
    # instance norm has no running statistics: the single output is exactly the first deep-supervision output
    torch.testing.assert_close(full, out[0])


def test_2d_network_caps_features_at_480():
    plan = stage_plan([64, 96], [[2, 2]] * 5, [[3, 3]] * 6)
    net = build_network(plan, num_input_channels=1, num_classes_with_bg=4, dimension="2d")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert max(c.out_channels for c in convs) == 480
    bottleneck_conv = net.conv_blocks_context[-1][1].blocks[0].conv
    assert bottleneck_conv.out_channels == 480 and bottleneck_conv.in_channels == 480
    with torch.no_grad():
        out = net(torch.randn(1, 1, 64, 96))
    assert [tuple(o.shape) for o in out] == expected_shapes(plan, 1, 4)


def test_3d_network_caps_features_at_320():
    pools = [[2, 2, 2]] * 5
    net = GenericUNet(1, 2, pools, [[3, 3, 3]] * 6)
    widths = [stack.blocks[0].conv.out_channels for stack in net.conv_blocks_context[:-1]]
    assert widths == [32, 64, 128, 256, 320]
    assert net.conv_blocks_context[-1][0].blocks[0].conv.out_channels == 320


def test_anisotropic_strides_kernels_and_padding():
    net = build_network(ANISO, 1, 2, "3d")
    first = net.conv_blocks_context[0].blocks[0].conv
    assert first.kernel_size == (1, 3, 3) and first.padding == (0, 1, 1) and first.stride == (1, 1, 1)
    # strided-conv downsampling: the first conv of stage d > 0 uses pool kernel d-1
    for d in range(1, ANISO.num_pool):
        assert net.conv_blocks_context[d].blocks[0].conv.stride == tuple(ANISO.pool_op_kernel_sizes[d - 1])
        assert net.conv_blocks_context[d].blocks[1].conv.stride == (1, 1, 1)
    assert net.conv_blocks_context[-1][0].blocks[0].conv.stride == (2, 2, 2)
    # transposed convs: kernel == stride == pool kernel, coarse to fine, no bias
    for u, tu in enumerate(net.tu):
        assert tu.kernel_size == tu.stride == tuple(ANISO.pool_op_kernel_sizes[-(u + 1)])
        assert tu.bias is None
    # nnU-Net v1 indexes decoder kernels with conv_kernel_sizes[-(u + 1)]: the finest decoder stage therefore uses
    # stage 1's kernel (3x3x3), not stage 0's (1x3x3)
    finest = net.conv_blocks_localization[-1][0].blocks[0].conv
    assert finest.kernel_size == (3, 3, 3)
    assert all(h.bias is None and h.kernel_size == (1, 1, 1) for h in net.seg_outputs)


def _conv_block_params(cin: int, cout: int, k: int) -> int:
    return k**3 * cin * cout + cout + 2 * cout  # weights, bias, instance-norm affine


def test_hippocampus_parameter_count():
    """Count derived from the architecture definition (spec §5) for 1 modality and 3 classes."""
    features = [32, 64, 128, 256]
    expected = 0
    cin = 1
    for f in features:  # encoder stages and bottleneck, two blocks each
        expected += _conv_block_params(cin, f, 3) + _conv_block_params(f, f, 3)
        cin = f
    for below, skip in zip(features[:0:-1], features[-2::-1]):  # decoder, coarse to fine
        expected += 2**3 * below * skip  # transposed conv, no bias
        expected += _conv_block_params(2 * skip, skip, 3) + _conv_block_params(skip, skip, 3)
        expected += skip * 3  # 1x1x1 head, no bias
    net = build_network(HIPPO, 1, 3, "3d")
    assert sum(p.numel() for p in net.parameters()) == expected
    assert expected == 5_602_944  # the same number nnU-Net v1's Generic_UNet has for this topology


def test_state_dict_uses_nnunet_v1_names():
    keys = set(build_network(HIPPO, 1, 3, "3d").state_dict())
    for key in (
        "conv_blocks_context.0.blocks.0.conv.weight",
        "conv_blocks_context.0.blocks.1.instnorm.bias",
        "conv_blocks_context.3.0.blocks.0.conv.weight",
        "conv_blocks_context.3.1.blocks.0.conv.bias",
        "conv_blocks_localization.2.0.blocks.0.conv.weight",
        "conv_blocks_localization.2.1.blocks.0.instnorm.weight",
        "tu.0.weight",
        "seg_outputs.2.weight",
    ):
        assert key in keys
    assert "tu.0.bias" not in keys and "seg_outputs.0.bias" not in keys


def test_he_initialisation():
    torch.manual_seed(0)
    net = build_network(HIPPO, 1, 3, "3d")
    conv = net.conv_blocks_context[-1][1].blocks[0].conv  # 256 -> 256, 3x3x3: fan_in 6912
    fan_in = conv.weight[0].numel()
    expected_std = math.sqrt(2.0 / (1 + 1e-2**2)) / math.sqrt(fan_in)
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
    biases = [m.bias for m in net.modules() if isinstance(m, nn.Conv3d) and m.bias is not None]
    assert biases and all(torch.count_nonzero(b) == 0 for b in biases)
    norm = net.conv_blocks_context[0].blocks[0].instnorm
    assert norm.eps == 1e-5 and norm.affine and not norm.track_running_stats
    assert net.conv_blocks_context[0].blocks[0].lrelu.negative_slope == 1e-2


def test_backward_reaches_every_parameter():
    net = build_network(ANISO, 1, 2, "3d")
    out = net(torch.randn(2, 1, 4, 16, 8))  # smallest input the pooling allows
    sum(o.square().mean() for o in out).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_no_deep_supervision_network_returns_one_map():
    net = build_network(ANISO, 1, 2, "3d", deep_supervision=False)
    assert net.do_ds is False
    with torch.no_grad():
        out = net(torch.randn(1, 1, *ANISO.patch_size))
    assert tuple(out.shape) == (1, 2, *ANISO.patch_size)


@pytest.mark.parametrize(
    ("plan", "dimension"),
    [(HIPPO, "2d"), (stage_plan([64, 64], [[2, 2]], [[3, 3], [3, 3]]), "3d"), (HIPPO, "4d")],
)
def test_build_network_rejects_wrong_dimension(plan, dimension):
    with pytest.raises(BadInputError, match="dimension"):
        build_network(plan, 1, 2, dimension)


def test_inconsistent_topology_is_rejected():
    with pytest.raises(BadInputError, match="conv_kernel_sizes"):
        GenericUNet(1, 2, [[2, 2, 2]] * 3, [[3, 3, 3]] * 3)
    with pytest.raises(BadInputError, match="pool_op_kernel_sizes"):
        GenericUNet(1, 2, [[2, 2]] * 2, [[3, 3, 3]] * 3)
    with pytest.raises(BadInputError, match="empty"):
        GenericUNet(1, 2, [], [[3, 3, 3]])
