"""Undo preprocessing: bring a segmentation or class probabilities back to the original image grid (spec §8.5).

Steps: transpose back with ``transpose_backward`` -> resample to ``size_after_cropping`` (probabilities as data
with order 1 and order 0 along a separate low-resolution axis; label maps label by label with order 1) -> paste
into an array of ``original_size_of_raw_data`` at ``crop_bbox``. The separate-z decision is that of nnU-Net v1's
export (original spacing first, then the spacing after resampling); unlike v1, the latter is transposed back to
the original axis order before it is used, so its low-resolution axis indexes the right array axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stages.plan.models import Plans
from stages.preprocess.models import CaseProperties
from stages.preprocess.preprocessor import PreprocessParams
from stages.preprocess.resampling import (
    RESAMPLING_SEPARATE_Z_ANISO_THRESHOLD,
    decide_separate_z,
    resample_data_or_seg,
)

TransposeSource = Plans | PreprocessParams | Sequence[int]


@dataclass(frozen=True)
class ExportResampling:
    """How probabilities go back to the original grid: the plans' ``segmentation_export_params``.

    Attributes:
        order: Interpolation order of the probabilities (``interpolation_order``, 1).
        order_z: Order along a separate low-resolution axis (``interpolation_order_z``, 0).
        force_separate_z: Force the separate-z decision (``force_separate_z``; None: the rule).
    """

    order: int = 1
    order_z: int = 0
    force_separate_z: bool | None = None

    @classmethod
    def from_plans(cls, plans: Plans) -> ExportResampling:
        """The plans' export parameters (missing ones: order 1, z order 0, the separate-z rule)."""
        params = plans.segmentation_export_params or {}
        order = params.get("interpolation_order")
        order_z = params.get("interpolation_order_z")
        return cls(1 if order is None else int(order), 0 if order_z is None else int(order_z),
                   params.get("force_separate_z"))


#: nnU-Net's export defaults.
DEFAULT_EXPORT_RESAMPLING = ExportResampling()


def _transpose_backward(source: TransposeSource) -> list[int]:
    if isinstance(source, Plans | PreprocessParams):
        return list(source.transpose_backward)
    return [int(a) for a in source]


def _check_shape(arr_shape: Sequence[int], props: CaseProperties) -> None:
    if props.size_after_resampling and list(arr_shape) != list(props.size_after_resampling):
        raise ValueError(
            f"case {props.case_id}: array shape {tuple(arr_shape)} is not the preprocessed shape "
            f"{tuple(props.size_after_resampling)}"
        )


def _resample_to_cropped(arr: np.ndarray, props: CaseProperties, tb: list[int], is_seg: bool, order: int,
                         order_z: int, force_separate_z: bool | None, threshold: float) -> np.ndarray:
    """Channel-first ``arr`` in preprocessed order -> channel-first in original order at ``size_after_cropping``."""
    arr = arr.transpose((0, *[a + 1 for a in tb]))
    target = tuple(props.size_after_cropping)
    if tuple(arr.shape[1:]) == target:
        return arr
    spacing_back = [props.spacing_after_resampling[a] for a in tb]
    separate, axis = decide_separate_z(props.original_spacing, spacing_back, force_separate_z, threshold)
    return resample_data_or_seg(arr, target, is_seg, axis, order, separate, order_z)


def paste_into_original(cropped: np.ndarray, props: CaseProperties, fill: float | Sequence[float] = 0
                        ) -> np.ndarray:
    """Place an array of ``size_after_cropping`` into the original grid at ``crop_bbox``.

    Args:
        cropped: Spatial array, or channel-first ``(C, *size_after_cropping)``.
        props: The case's properties.
        fill: Value outside the box; for channel-first input one value per channel is allowed
            (e.g. ``[1, 0, 0]`` for probabilities, background certain outside).

    Returns:
        Array of ``original_size_of_raw_data`` (with the leading channel axis if the input had one).
    """
    spatial = tuple(props.original_size_of_raw_data)
    lead = cropped.shape[: cropped.ndim - len(spatial)]
    if tuple(cropped.shape[len(lead):]) != tuple(props.size_after_cropping):
        raise ValueError(f"case {props.case_id}: shape {cropped.shape} does not end in size_after_cropping "
                         f"{tuple(props.size_after_cropping)}")
    full = np.empty((*lead, *spatial), dtype=cropped.dtype)
    if lead and not np.isscalar(fill):
        for c, value in enumerate(fill):
            full[c] = value
    else:
        full[...] = fill
    box = tuple(slice(lo, hi) for lo, hi in props.crop_bbox)
    full[(Ellipsis, *box)] = cropped
    return full


def revert_probabilities(
    probs: np.ndarray,
    props: CaseProperties,
    transpose: TransposeSource,
    resampling: ExportResampling = DEFAULT_EXPORT_RESAMPLING,
    full_size: bool = False,
    threshold: float = RESAMPLING_SEPARATE_Z_ANISO_THRESHOLD,
) -> np.ndarray:
    """Class probabilities ``(C, *size_after_resampling)`` -> original axis order and grid (spec §8.5 step 1).

    Args:
        probs: Probabilities (any float dtype) in preprocessed (transposed, resampled) order.
        props: The case's properties.
        transpose: Plans, preprocessing parameters, or ``transpose_backward`` itself.
        resampling: Interpolation orders and separate-z decision (default: nnU-Net's export defaults).
        full_size: Also paste into ``original_size_of_raw_data`` (background channel 1 outside the crop box,
            other channels 0); otherwise return ``(C, *size_after_cropping)``.
        threshold: Anisotropy ratio that triggers separate-z.

    Returns:
        Probabilities in original axis order with the dtype of ``probs``.
    """
    _check_shape(probs.shape[1:], props)
    out = _resample_to_cropped(probs, props, _transpose_backward(transpose), False, resampling.order,
                               resampling.order_z, resampling.force_separate_z, threshold)
    if full_size:
        out = paste_into_original(out, props, [1.0] + [0.0] * (out.shape[0] - 1))
    return np.ascontiguousarray(out)


def revert_segmentation(
    seg: np.ndarray,
    props: CaseProperties,
    transpose: TransposeSource,
    order: int = 1,
    force_separate_z: bool | None = None,
    threshold: float = RESAMPLING_SEPARATE_Z_ANISO_THRESHOLD,
) -> np.ndarray:
    """A label map in preprocessed order -> the original image grid (label by label resampling, 0 outside).

    Args:
        seg: Spatial label map ``(*size_after_resampling)`` or ``(1, *size_after_resampling)``; -1 (outside the
            nonzero mask) becomes 0.
        props: The case's properties.
        transpose: Plans, preprocessing parameters, or ``transpose_backward`` itself.
        order: Interpolation order of the label masks (order 0 along a separate low-resolution axis).
        force_separate_z: Force the separate-z decision (None: the rule).
        threshold: Anisotropy ratio that triggers separate-z.

    Returns:
        uint8 label map of ``original_size_of_raw_data``.
    """
    if seg.ndim == len(props.original_size_of_raw_data):
        seg = seg[None]
    _check_shape(seg.shape[1:], props)
    out = _resample_to_cropped(np.asarray(seg), props, _transpose_backward(transpose), True, order, 0,
                               force_separate_z, threshold)[0]
    if out.min(initial=0) < 0 or out.max(initial=0) > 255:
        out = np.clip(out, 0, 255)
    return paste_into_original(out.astype(np.uint8), props, 0)


def revert_preprocessing(
    seg_or_probs: np.ndarray,
    props: CaseProperties,
    transpose: TransposeSource,
    is_probabilities: bool | None = None,
    order: int = 1,
) -> np.ndarray:
    """Bring a preprocessed label map or probability map back to the original grid (full size).

    Args:
        seg_or_probs: ``(C, ...)`` probabilities, or a label map ``(...)``/``(1, ...)``.
        props: The case's properties.
        transpose: Plans, preprocessing parameters, or ``transpose_backward`` itself.
        is_probabilities: Whether the input holds probabilities (default: a floating array with a channel axis
            of more than one channel).
        order: Interpolation order (1).

    Returns:
        Full-size probabilities ``(C, *original_size_of_raw_data)`` or a uint8 label map.
    """
    if is_probabilities is None:
        ndim = len(props.original_size_of_raw_data)
        is_probabilities = (np.issubdtype(seg_or_probs.dtype, np.floating) and seg_or_probs.ndim == ndim + 1
                            and seg_or_probs.shape[0] > 1)
    if is_probabilities:
        return revert_probabilities(seg_or_probs, props, transpose, ExportResampling(order=order), full_size=True)
    return revert_segmentation(seg_or_probs, props, transpose, order=order)
