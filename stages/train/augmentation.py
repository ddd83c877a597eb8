"""Data augmentation of nnU-Net v1's ``nnUNetTrainerV2`` (spec §7, cascade additions §9).

:func:`default_augmentation_params` gives the effective parameters of a configuration (the V2 overrides of the
default 3D/2D dicts, including the enlarged loader patch), :func:`get_training_transforms` and
:func:`get_validation_transforms` the batchgenerators ``Compose`` pipelines in nnU-Net's order. The few
transforms nnU-Net adds to batchgenerators (dummy-2D folding, mask, cascade one-hot and its augmentations,
deep-supervision targets) are defined here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.channel_selection_transforms import SegChannelSelectionTransform
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    BrightnessTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform
from batchgenerators.transforms.utility_transforms import NumpyToTensor, RemoveLabelTransform, RenameTransform
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.morphology import ball
from skimage.transform import resize

from stages.errors import BadInputError
from stages.train.data import get_patch_size

LOADER_SCALE_RANGE = (0.85, 1.25)  # quirk (spec §16.4): the enlarged patch uses the default range, not (0.7, 1.4)


def _deg(angle: float) -> float:
    return angle / 360.0 * 2.0 * np.pi


class AugmentationParams(BaseModel):
    """Effective augmentation parameters of ``nnUNetTrainerV2`` (spec §7.1); names follow nnU-Net's dict keys.

    Angles are in radians. The ``cascade_*`` fields only matter when a previous-stage segmentation is present.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    patch_size: tuple[int, ...] = Field(description="Final patch: the network input, output of the spatial step.")
    loader_patch_size: tuple[int, ...] = Field(description="Enlarged patch the training loader reads (§7.2).")
    dummy_2D: bool = Field(False, description="3D data augmented slice-wise (in-plane only).")
    do_elastic: bool = False
    elastic_deform_alpha: tuple[float, float] = (0.0, 900.0)
    elastic_deform_sigma: tuple[float, float] = (9.0, 13.0)
    p_eldef: float = 0.2
    do_scaling: bool = True
    scale_range: tuple[float, float] = (0.7, 1.4)
    independent_scale_factor_for_each_axis: bool = False
    p_scale: float = 0.2
    do_rotation: bool = True
    rotation_x: tuple[float, float] = (_deg(-30.0), _deg(30.0))
    rotation_y: tuple[float, float] = (_deg(-30.0), _deg(30.0))
    rotation_z: tuple[float, float] = (_deg(-30.0), _deg(30.0))
    rotation_p_per_axis: float = 1.0
    p_rot: float = 0.2
    random_crop: bool = False
    border_mode_data: str = "constant"
    do_gamma: bool = True
    gamma_retain_stats: bool = True
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_gamma: float = 0.3
    do_mirror: bool = True
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    do_additive_brightness: bool = False
    additive_brightness_p_per_sample: float = 0.15
    additive_brightness_p_per_channel: float = 0.5
    additive_brightness_mu: float = 0.0
    additive_brightness_sigma: float = 0.1
    num_cached_per_thread: int = 2
    cascade_do_cascade_augmentations: bool = True
    cascade_random_binary_transform_p: float = 0.4
    cascade_random_binary_transform_p_per_label: float = 1.0
    cascade_random_binary_transform_size: tuple[float, float] = (1.0, 8.0)
    cascade_remove_conn_comp_p: float = 0.2
    cascade_remove_conn_comp_max_size_percent_threshold: float = 0.15
    cascade_remove_conn_comp_fill_with_other_class_p: float = 0.0
    cascade_v1_swapped_conn_comp_args: bool = Field(
        True,
        description="Pass the two connected-component arguments swapped like nnU-Net v1 does (spec §16.5), "
        "which makes that augmentation a no-op.",
    )


def default_augmentation_params(
    patch_size: Sequence[int], dimension: int | Literal["2D", "3D", "2d", "3d"], do_dummy_2D: bool = False
) -> AugmentationParams:
    """Parameters of the V2 trainer for a configuration (``nnUNetTrainerV2.setup_DA_params``).

    Args:
        patch_size: The configuration's (final) patch size.
        dimension: 2 or 3 (or "2D"/"3D"): the network's dimensionality.
        do_dummy_2D: The plans' ``do_dummy_2D_data_aug`` (ignored for 2D networks).
    """
    dim = {"2": 2, "3": 3, "2D": 2, "3D": 3}.get(str(dimension).upper())
    if dim is None:
        raise BadInputError(f"dimension must be 2 or 3 (or '2D'/'3D'), got {dimension!r}")
    if len(patch_size) != dim:
        raise BadInputError(f"a {dim}D configuration needs a {dim}D patch size, got {list(patch_size)}")
    patch = tuple(int(p) for p in patch_size)
    values: dict = {}
    if dim == 3:
        rot = (_deg(-30.0), _deg(30.0))
        values.update(rotation_x=rot, rotation_y=rot, rotation_z=rot, mirror_axes=(0, 1, 2))
        if do_dummy_2D:  # in-plane rotation and the 2D dict's (unused) elastic parameters
            values.update(dummy_2D=True, rotation_x=(_deg(-180.0), _deg(180.0)), elastic_deform_alpha=(0.0, 200.0))
    else:
        do_dummy_2D = False
        rx = (_deg(-15.0), _deg(15.0)) if max(patch) / min(patch) > 1.5 else (_deg(-180.0), _deg(180.0))
        values.update(rotation_x=rx, rotation_y=(0.0, 0.0), rotation_z=(0.0, 0.0), mirror_axes=(0, 1),
                      elastic_deform_alpha=(0.0, 200.0))
    loader = get_patch_size(patch, values["rotation_x"], values["rotation_y"], values["rotation_z"],
                            LOADER_SCALE_RANGE, dummy_2d=do_dummy_2D)
    return AugmentationParams(patch_size=patch, loader_patch_size=loader, **values)


class Convert3DTo2DTransform(AbstractTransform):
    """Dummy-2D: fold axis 0 into the channels, (B, C, Z, Y, X) -> (B, C*Z, Y, X), for data and seg."""

    def __call__(self, **data_dict):
        """Transform a batch dict in place and return it."""
        for key in ("data", "seg"):
            shp = data_dict[key].shape
            data_dict[f"orig_shape_{key}"] = shp
            data_dict[key] = data_dict[key].reshape((shp[0], shp[1] * shp[2], shp[3], shp[4]))
        return data_dict


class Convert2DTo3DTransform(AbstractTransform):
    """Undo :class:`Convert3DTo2DTransform` after the spatial transform changed the in-plane size."""

    def __call__(self, **data_dict):
        """Transform a batch dict in place and return it."""
        for key in ("data", "seg"):
            shp = data_dict.pop(f"orig_shape_{key}")
            cur = data_dict[key].shape
            data_dict[key] = data_dict[key].reshape((shp[0], shp[1], shp[2], cur[-2], cur[-1]))
        return data_dict


class MaskTransform(AbstractTransform):
    """Set image voxels outside the nonzero mask (seg channel 0 < 0) to 0 for mask-normalized channels."""

    def __init__(self, use_mask_for_norm: Mapping[int, bool] | Sequence[bool], set_outside_to: float = 0.0):
        self.use_mask_for_norm = use_mask_for_norm
        self.set_outside_to = set_outside_to

    def __call__(self, **data_dict):
        """Transform a batch dict in place and return it."""
        data, seg = data_dict["data"], data_dict["seg"]
        outside = seg[:, 0] < 0
        for c in range(data.shape[1]):
            if self.use_mask_for_norm[c]:
                data[:, c][outside] = self.set_outside_to
        return data_dict


class MoveSegAsOneHotToData(AbstractTransform):
    """Cascade: append the previous-stage seg (seg channel ``channel_id``) as one-hot labels to the data."""

    def __init__(self, channel_id: int, all_seg_labels: Sequence[int]):
        self.channel_id = channel_id
        self.all_seg_labels = list(all_seg_labels)

    def __call__(self, **data_dict):
        """Transform a batch dict in place and return it."""
        seg = data_dict["seg"]
        prev = seg[:, self.channel_id]
        onehot = np.stack([(prev == lab) for lab in self.all_seg_labels], axis=1).astype(data_dict["data"].dtype)
        data_dict["data"] = np.concatenate((data_dict["data"], onehot), axis=1)
        data_dict["seg"] = seg[:, [i for i in range(seg.shape[1]) if i != self.channel_id]]
        return data_dict


def _dilation(x: np.ndarray, fp: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(x, structure=fp, border_value=0)


def _erosion(x: np.ndarray, fp: np.ndarray) -> np.ndarray:
    return ndimage.binary_erosion(x, structure=fp, border_value=1)


def _closing(x: np.ndarray, fp: np.ndarray) -> np.ndarray:
    return _erosion(_dilation(x, fp), fp)


def _opening(x: np.ndarray, fp: np.ndarray) -> np.ndarray:
    return _dilation(_erosion(x, fp), fp)


class ApplyRandomBinaryOperatorTransform(AbstractTransform):
    """Cascade: dilate/erode/close/open one-hot previous-stage channels with a random ball (skimage semantics).

    Voxels a channel gains are removed from the other channels, keeping the encoding one-hot.
    """

    operators = (_dilation, _erosion, _closing, _opening)

    def __init__(self, channel_idx: Sequence[int], p_per_sample: float = 0.3, strel_size=(1, 10),
                 p_per_label: float = 1.0):
        self.channel_idx = list(channel_idx)
        self.p_per_sample = p_per_sample
        self.strel_size = strel_size
        self.p_per_label = p_per_label

    def __call__(self, **data_dict):
        """Transform a batch dict in place and return it."""
        data = data_dict["data"]
        for b in range(data.shape[0]):
            if np.random.uniform() < self.p_per_sample:
                channels = list(self.channel_idx)
                np.random.shuffle(channels)
                for c in channels:
                    if np.random.uniform() < self.p_per_label:
                        operator = self.operators[np.random.choice(len(self.operators))]
                        footprint = ball(np.random.uniform(*self.strel_size))
                        before = data[b, c].astype(int)
                        after = operator(before, footprint).astype(int)
                        data[b, c] = after
                        added = (after - before) > 0
                        for other in channels:
                            if other != c:
                                data[b, other][added] = 0
        return data_dict


class RemoveRandomConnectedComponentFromOneHotEncodingTransform(AbstractTransform):
    """Cascade: drop a random connected component smaller than a share of the patch from a one-hot channel."""

    def __init__(self, channel_idx: Sequence[int], p_per_sample: float = 0.2, fill_with_other_class_p: float = 0.25,
                 dont_do_if_covers_more_than_x_percent: float = 0.25, p_per_label: float = 1.0):
        self.channel_idx = list(channel_idx)
        self.p_per_sample = p_per_sample
        self.fill_with_other_class_p = fill_with_other_class_p
        self.max_share = dont_do_if_covers_more_than_x_percent
        self.p_per_label = p_per_label

    def __call__(self, **data_dict):
        """Transform a batch dict in place and return it."""
        data = data_dict["data"]
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.p_per_sample:
                continue
            for c in self.channel_idx:
                # a share <= 0 admits no component (nnU-Net v1's swapped arguments): skip the labelling work
                if np.random.uniform() >= self.p_per_label or self.max_share <= 0:
                    continue
                lab, num = connected_components(data[b, c] > 0, return_num=True)
                if num == 0:
                    continue
                sizes = np.bincount(lab.ravel())[1:]
                candidates = [i + 1 for i, s in enumerate(sizes) if s < data[b, c].size * self.max_share]
                if not candidates:
                    continue
                component = lab == np.random.choice(candidates)
                data[b, c][component] = 0
                if np.random.uniform() < self.fill_with_other_class_p:
                    others = [i for i in self.channel_idx if i != c]
                    if others:
                        data[b, np.random.choice(others)][component] = 1
        return data_dict


class DownsampleSegForDSTransform2(AbstractTransform):
    """Deep-supervision targets: the target resized with nearest neighbour (order 0) to each scale.

    Equivalent to nnU-Net's per-sample ``resize_segmentation(order=0)`` (skimage ``resize``, mode edge), computed
    by indexing: nearest-neighbour resizing is separable, so the source index of every output row, column and
    slice is taken from skimage once per (input, output) length and cached.
    """

    def __init__(self, ds_scales: Sequence[Sequence[float]], order: int = 0, input_key: str = "target",
                 output_key: str = "target"):
        if order != 0:
            raise BadInputError("only order 0 (nearest neighbour) deep-supervision targets are supported")
        self.ds_scales = [tuple(float(v) for v in s) for s in ds_scales]
        self.input_key = input_key
        self.output_key = output_key
        self._index_cache: dict[tuple[int, int], np.ndarray] = {}

    def _indices(self, n_in: int, n_out: int) -> np.ndarray:
        key = (n_in, n_out)
        if key not in self._index_cache:
            ramp = resize(np.arange(n_in, dtype=float), (n_out,), order=0, mode="edge", clip=True,
                          anti_aliasing=False)
            self._index_cache[key] = np.rint(ramp).astype(np.intp)
        return self._index_cache[key]

    def __call__(self, **data_dict):
        """Transform a batch dict in place and return it."""
        seg = data_dict[self.input_key]
        spatial = seg.shape[2:]
        outputs = []
        for scale in self.ds_scales:
            if all(s == 1 for s in scale):
                outputs.append(seg)
                continue
            new_shape = np.round(np.asarray(spatial, dtype=float) * np.asarray(scale)).astype(int)
            index = np.ix_(*[self._indices(n, int(m)) for n, m in zip(spatial, new_shape)])
            outputs.append(np.ascontiguousarray(seg[(slice(None), slice(None), *index)]))
        data_dict[self.output_key] = outputs
        return data_dict


def _cascade_transforms(params: AugmentationParams, cascade_labels: Sequence[int]) -> list:
    transforms: list = [MoveSegAsOneHotToData(1, cascade_labels)]
    if not params.cascade_do_cascade_augmentations:
        return transforms
    channels = list(range(-len(cascade_labels), 0))
    if params.cascade_random_binary_transform_p > 0:
        transforms.append(ApplyRandomBinaryOperatorTransform(
            channels, p_per_sample=params.cascade_random_binary_transform_p,
            strel_size=params.cascade_random_binary_transform_size,
            p_per_label=params.cascade_random_binary_transform_p_per_label))
    if params.cascade_remove_conn_comp_p > 0:
        threshold = params.cascade_remove_conn_comp_max_size_percent_threshold
        fill_p = params.cascade_remove_conn_comp_fill_with_other_class_p
        if params.cascade_v1_swapped_conn_comp_args:
            threshold, fill_p = fill_p, threshold
        transforms.append(RemoveRandomConnectedComponentFromOneHotEncodingTransform(
            channels, p_per_sample=params.cascade_remove_conn_comp_p, fill_with_other_class_p=fill_p,
            dont_do_if_covers_more_than_x_percent=threshold))
    return transforms


def _final_transforms(deep_supervision_scales: Sequence[Sequence[float]] | None) -> list:
    transforms: list = [RenameTransform("seg", "target", True)]
    if deep_supervision_scales is not None:
        transforms.append(DownsampleSegForDSTransform2(deep_supervision_scales, 0, "target", "target"))
    transforms.append(NumpyToTensor(["data", "target"], "float"))
    return transforms


def get_training_transforms(
    params: AugmentationParams,
    *,
    deep_supervision_scales: Sequence[Sequence[float]] | None = None,
    use_mask_for_norm: Mapping[int, bool] | Sequence[bool] | None = None,
    cascade_labels: Sequence[int] | None = None,
    order_data: int = 3,
    order_seg: int = 1,
    border_val_seg: float = -1,
) -> Compose:
    """The training pipeline in nnU-Net's order (spec §7.3, ``get_moreDA_augmentation``).

    Args:
        params: From :func:`default_augmentation_params`.
        deep_supervision_scales: Target scales (:func:`stages.train.loss.deep_supervision_scales`); None keeps
            one target.
        use_mask_for_norm: Per image channel, whether it was normalized inside the nonzero mask (the plans'
            ``use_mask_for_norm``); those channels are zeroed outside the mask.
        cascade_labels: Foreground labels ``1..K-1`` of the previous stage (3d_cascade_fullres); None otherwise.
        order_data: Spline order of the image in the spatial transform.
        order_seg: Interpolation order of the segmentation in the spatial transform.
        border_val_seg: Segmentation value outside the image in the spatial transform.
    """
    dim = len(params.patch_size)
    if cascade_labels is not None and dim != 3:
        raise BadInputError("the cascade exists for 3D configurations only")
    t: list = [SegChannelSelectionTransform([0, 1] if cascade_labels is not None else [0])]
    spatial_patch = params.patch_size
    ignore_axes = None
    if params.dummy_2D:
        t.append(Convert3DTo2DTransform())
        spatial_patch = params.patch_size[1:]
        ignore_axes = (0,)
    t.append(SpatialTransform(
        spatial_patch, patch_center_dist_from_border=None, do_elastic_deform=params.do_elastic,
        alpha=params.elastic_deform_alpha, sigma=params.elastic_deform_sigma, do_rotation=params.do_rotation,
        angle_x=params.rotation_x, angle_y=params.rotation_y, angle_z=params.rotation_z,
        p_rot_per_axis=params.rotation_p_per_axis, do_scale=params.do_scaling, scale=params.scale_range,
        border_mode_data=params.border_mode_data, border_cval_data=0, order_data=order_data,
        border_mode_seg="constant", border_cval_seg=border_val_seg, order_seg=order_seg,
        random_crop=params.random_crop, p_el_per_sample=params.p_eldef, p_scale_per_sample=params.p_scale,
        p_rot_per_sample=params.p_rot, independent_scale_for_each_axis=params.independent_scale_factor_for_each_axis,
    ))
    if params.dummy_2D:
        t.append(Convert2DTo3DTransform())
    t.append(GaussianNoiseTransform(p_per_sample=0.1))
    t.append(GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5))
    t.append(BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15))
    if params.do_additive_brightness:
        t.append(BrightnessTransform(params.additive_brightness_mu, params.additive_brightness_sigma, True,
                                     p_per_sample=params.additive_brightness_p_per_sample,
                                     p_per_channel=params.additive_brightness_p_per_channel))
    t.append(ContrastAugmentationTransform(p_per_sample=0.15))
    t.append(SimulateLowResolutionTransform(zoom_range=(0.5, 1), per_channel=True, p_per_channel=0.5,
                                            order_downsample=0, order_upsample=3, p_per_sample=0.25,
                                            ignore_axes=ignore_axes))
    t.append(GammaTransform(params.gamma_range, True, True, retain_stats=params.gamma_retain_stats, p_per_sample=0.1))
    if params.do_gamma:
        t.append(GammaTransform(params.gamma_range, False, True, retain_stats=params.gamma_retain_stats,
                                p_per_sample=params.p_gamma))
    if params.do_mirror:
        t.append(MirrorTransform(params.mirror_axes))
    if use_mask_for_norm is not None:
        t.append(MaskTransform(use_mask_for_norm, set_outside_to=0))
    t.append(RemoveLabelTransform(-1, 0))
    if cascade_labels is not None:
        t.extend(_cascade_transforms(params, cascade_labels))
    t.extend(_final_transforms(deep_supervision_scales))
    return Compose(t)


def get_validation_transforms(
    *,
    deep_supervision_scales: Sequence[Sequence[float]] | None = None,
    cascade_labels: Sequence[int] | None = None,
) -> Compose:
    """The pipeline for validation batches during training: no spatial or intensity augmentation.

    Args:
        deep_supervision_scales: Target scales, as for training.
        cascade_labels: Foreground labels of the previous stage (cascade) or None.
    """
    t: list = [RemoveLabelTransform(-1, 0)]
    t.append(SegChannelSelectionTransform([0, 1] if cascade_labels is not None else [0]))
    if cascade_labels is not None:
        t.append(MoveSegAsOneHotToData(1, cascade_labels))
    t.extend(_final_transforms(deep_supervision_scales))
    return Compose(t)
