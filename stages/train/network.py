"""The segmentation network: nnU-Net v1's ``Generic_UNet`` as nnUNetTrainerV2 instantiates it (spec §5).

A plain U-Net, 2D or 3D, whose topology comes from the plans: one encoder stage per pooling step plus a
bottleneck, strided-convolution downsampling, transposed-convolution upsampling, two conv-InstanceNorm-LeakyReLU
blocks per stage and a 1x1 segmentation head after every decoder stage (deep supervision).

Submodule names follow nnU-Net v1 (``conv_blocks_context``, ``conv_blocks_localization``, ``tu``,
``seg_outputs``; blocks with ``conv``/``instnorm``/``lrelu``), so a ``state_dict`` of a network trained with
nnU-Net v1 loads into the same topology here and vice versa.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from stages.errors import BadInputError
from stages.plan.models import StagePlan

BASE_NUM_FEATURES = 32
MAX_NUM_FEATURES_3D = 320
MAX_NUM_FEATURES_2D = 480
NORM_EPS = 1e-5
LEAKY_SLOPE = 1e-2
HE_INIT_A = 1e-2

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_TRANSPOSED = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


class ConvNormAct(nn.Module):
    """One building block: convolution (with bias) -> InstanceNorm (affine) -> LeakyReLU (in place).

    Args:
        ndim: 2 or 3 spatial dimensions.
        in_channels: Input feature maps.
        out_channels: Output feature maps.
        kernel_size: Kernel per axis; padding is 1 on axes with kernel 3 and 0 elsewhere.
        stride: Stride per axis (the pooling kernel for a downsampling block, else 1).
    """

    def __init__(
        self, ndim: int, in_channels: int, out_channels: int, kernel_size: Sequence[int], stride: Sequence[int]
    ) -> None:
        super().__init__()
        padding = [1 if k == 3 else 0 for k in kernel_size]
        self.conv = _CONV[ndim](in_channels, out_channels, list(kernel_size), list(stride), padding, bias=True)
        self.instnorm = _NORM[ndim](out_channels, eps=NORM_EPS, affine=True)
        self.lrelu = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply conv, norm and nonlinearity."""
        return self.lrelu(self.instnorm(self.conv(x)))


class ConvStack(nn.Module):
    """``num_convs`` blocks in a row; only the first changes the channel count and may be strided.

    Args:
        ndim: 2 or 3 spatial dimensions.
        in_channels: Input feature maps of the first block.
        out_channels: Output feature maps of every block.
        num_convs: Number of blocks.
        kernel_size: Kernel per axis of every block.
        first_stride: Stride of the first block (None: 1 on every axis).
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        out_channels: int,
        num_convs: int,
        kernel_size: Sequence[int],
        first_stride: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        ones = [1] * ndim
        layers = [ConvNormAct(ndim, in_channels, out_channels, kernel_size, first_stride or ones)]
        layers += [ConvNormAct(ndim, out_channels, out_channels, kernel_size, ones) for _ in range(num_convs - 1)]
        self.blocks = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the blocks."""
        return self.blocks(x)


class GenericUNet(nn.Module):
    """U-Net with strided-conv encoder, transposed-conv decoder and deep-supervision heads (spec §5).

    The network outputs logits. With ``do_ds`` True (training) ``forward`` returns a tuple of ``num_pool`` logit
    maps, full resolution first and then successively coarser (scales of :func:`stages.train.loss.
    deep_supervision_scales`); with ``do_ds`` False (validation, inference) it returns the full-resolution map
    only, and the coarser heads are not computed.

    As in nnU-Net v1, decoder stage ``u`` (coarse to fine) uses ``conv_kernel_sizes[-(u + 1)]``, the kernel of
    the encoder stage one level below its skip connection; this only matters for anisotropic kernels.

    Args:
        num_input_channels: Image modalities.
        num_classes: Output channels (classes including background).
        pool_op_kernel_sizes: One stride per pooling step, each with one entry per spatial axis.
        conv_kernel_sizes: One kernel per encoder stage (``num_pool + 1`` entries).
        base_num_features: Feature maps of the first stage; doubled per stage.
        max_num_features: Cap on feature maps (None: 320 in 3D, 480 in 2D).
        num_convs_per_stage: Blocks per encoder and decoder stage.
        deep_supervision: Whether the network has deep supervision outputs at all (``do_ds`` starts equal).
    """

    def __init__(
        self,
        num_input_channels: int,
        num_classes: int,
        pool_op_kernel_sizes: Sequence[Sequence[int]],
        conv_kernel_sizes: Sequence[Sequence[int]],
        base_num_features: int = BASE_NUM_FEATURES,
        max_num_features: int | None = None,
        num_convs_per_stage: int = 2,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        pools = [list(p) for p in pool_op_kernel_sizes]
        kernels = [list(k) for k in conv_kernel_sizes]
        _check_topology(pools, kernels, num_convs_per_stage)
        ndim = len(kernels[0])
        if max_num_features is None:
            max_num_features = MAX_NUM_FEATURES_3D if ndim == 3 else MAX_NUM_FEATURES_2D
        num_pool = len(pools)
        self.ndim = ndim
        self.num_classes = num_classes
        self.pool_op_kernel_sizes = pools
        self.conv_kernel_sizes = kernels
        self._deep_supervision = deep_supervision
        self.do_ds = deep_supervision

        features = [min(base_num_features * 2**d, max_num_features) for d in range(num_pool + 1)]
        context: list[nn.Module] = []
        in_ch = num_input_channels
        for d in range(num_pool):
            stride = pools[d - 1] if d > 0 else None
            context.append(ConvStack(ndim, in_ch, features[d], num_convs_per_stage, kernels[d], stride))
            in_ch = features[d]
        bottom = features[num_pool]
        context.append(
            nn.Sequential(
                ConvStack(ndim, in_ch, bottom, num_convs_per_stage - 1, kernels[num_pool], pools[-1]),
                ConvStack(ndim, bottom, bottom, 1, kernels[num_pool]),
            )
        )

        upsampling: list[nn.Module] = []
        localization: list[nn.Module] = []
        heads: list[nn.Module] = []
        below = bottom
        for u in range(num_pool):
            skip = features[num_pool - 1 - u]
            pool = pools[num_pool - 1 - u]
            upsampling.append(_TRANSPOSED[ndim](below, skip, pool, pool, bias=False))
            # v1 quirk kept for checkpoint compatibility: decoder stage u uses conv_kernel_sizes[-(u + 1)], i.e. the
            # kernel of the encoder stage one below its skip connection.
            kernel = kernels[num_pool - u]
            localization.append(
                nn.Sequential(
                    ConvStack(ndim, 2 * skip, skip, num_convs_per_stage - 1, kernel),
                    ConvStack(ndim, skip, skip, 1, kernel),
                )
            )
            heads.append(_CONV[ndim](skip, num_classes, 1, 1, 0, bias=False))
            below = skip
        # registration order as in v1, so state_dict keys come out in the same order
        self.conv_blocks_localization = nn.ModuleList(localization)
        self.conv_blocks_context = nn.ModuleList(context)
        self.tu = nn.ModuleList(upsampling)
        self.seg_outputs = nn.ModuleList(heads)
        self.apply(init_weights_he)

    @property
    def num_pool(self) -> int:
        """Number of downsampling steps (= number of deep supervision outputs)."""
        return len(self.pool_op_kernel_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Logits of ``x`` (B, C, *spatial): a tuple full-res first if ``do_ds``, else the full-res map."""
        last = self.num_pool - 1
        skips = []
        for d in range(self.num_pool):
            x = self.conv_blocks_context[d](x)
            skips.append(x)
        x = self.conv_blocks_context[-1](x)
        deep = self._deep_supervision and self.do_ds
        outputs = []
        for u in range(self.num_pool):
            x = self.tu[u](x)
            x = torch.cat((x, skips[last - u]), dim=1)
            x = self.conv_blocks_localization[u](x)
            if deep or u == last:
                outputs.append(self.seg_outputs[u](x))
        if deep:
            return tuple(reversed(outputs))
        return outputs[-1]


def init_weights_he(module: nn.Module) -> None:
    """He (Kaiming normal, ``a = 1e-2``) init of conv and transposed-conv weights, biases 0 (``module.apply``)."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=HE_INIT_A)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _check_topology(pools: list[list[int]], kernels: list[list[int]], num_convs: int) -> None:
    """Raise BadInputError unless pools/kernels describe a consistent 2D or 3D U-Net."""
    if not pools:
        raise BadInputError("network topology: pool_op_kernel_sizes is empty (need at least one pooling step)")
    if len(kernels) != len(pools) + 1:
        raise BadInputError(
            f"network topology: {len(kernels)} conv_kernel_sizes for {len(pools)} pooling steps "
            f"(need num_pool + 1 = {len(pools) + 1})"
        )
    ndim = len(kernels[0])
    if ndim not in (2, 3):
        raise BadInputError(f"network topology: kernels have {ndim} axes (need 2 or 3): {kernels}")
    for name, entries in (("pool_op_kernel_sizes", pools), ("conv_kernel_sizes", kernels)):
        if any(len(e) != ndim for e in entries) or any(v < 1 for e in entries for v in e):
            raise BadInputError(f"network topology: {name} must all have {ndim} positive entries: {entries}")
    if num_convs < 1:
        raise BadInputError(f"network topology: num_convs_per_stage must be >= 1, got {num_convs}")


def build_network(
    stage_plan: StagePlan,
    num_input_channels: int,
    num_classes_with_bg: int,
    dimension: Literal["2d", "3d"],
    base_num_features: int = BASE_NUM_FEATURES,
    num_convs_per_stage: int = 2,
    deep_supervision: bool = True,
) -> GenericUNet:
    """The network of one configuration, from its stage plan (spec §5).

    Args:
        stage_plan: The configuration's stage (``pool_op_kernel_sizes``, ``conv_kernel_sizes``).
        num_input_channels: Number of modalities.
        num_classes_with_bg: Output channels, background included.
        dimension: ``"2d"`` or ``"3d"``; must match the length of the plan's kernel lists.
        base_num_features: Plans ``base_num_features`` (32).
        num_convs_per_stage: Plans ``conv_per_stage`` (2).
        deep_supervision: Build with deep supervision outputs (training); ``do_ds`` can switch them off later.

    Returns:
        A freshly initialised :class:`GenericUNet`.

    Raises:
        BadInputError: If the dimension does not match the plan or the topology is inconsistent.
    """
    ndim = {"2d": 2, "3d": 3}.get(dimension)
    if ndim is None:
        raise BadInputError(f"build_network: dimension must be '2d' or '3d', got {dimension!r}")
    if any(len(k) != ndim for k in stage_plan.conv_kernel_sizes):
        raise BadInputError(
            f"build_network: dimension {dimension} but the stage plan's conv_kernel_sizes are "
            f"{stage_plan.conv_kernel_sizes}"
        )
    return GenericUNet(
        num_input_channels,
        num_classes_with_bg,
        stage_plan.pool_op_kernel_sizes,
        stage_plan.conv_kernel_sizes,
        base_num_features=base_num_features,
        num_convs_per_stage=num_convs_per_stage,
        deep_supervision=deep_supervision,
    )
