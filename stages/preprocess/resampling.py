"""Resampling of images, segmentations and probability maps to a new voxel grid (spec §4.2, §8.5).

The interpolation is that of scikit-image's ``resize`` (``mode='edge'``, no anti-aliasing, output clipped to the
input's range), computed directly with :func:`scipy.ndimage.zoom` in ``grid_mode`` (which is what ``resize``
calls underneath) so that no float64 copy of the input is made; results equal nnU-Net v1's. Segmentations are
resized label by label ("one-hot"): each label's binary mask is interpolated and the label is assigned where the
result is >= 0.5, later (larger) labels overwriting earlier ones. Strongly anisotropic data are resampled
"separately in z": every slice orthogonal to the low-resolution axis is resized in 2D, then the slices are
resampled along that axis with order 0 (nearest neighbour, as :func:`scipy.ndimage.map_coordinates` with
``mode='nearest'`` and pixel-centre aligned coordinates).

All arrays are channel-first: ``(C, *spatial)``. Nothing is computed when the shape does not change.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

RESAMPLING_SEPARATE_Z_ANISO_THRESHOLD = 3

# dtypes scipy.ndimage interpolates natively; anything else (e.g. float16 probabilities) is computed in float32
_NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def get_do_separate_z(spacing: Sequence[float], anisotropy_threshold: float = RESAMPLING_SEPARATE_Z_ANISO_THRESHOLD
                      ) -> bool:
    """True if the largest spacing exceeds ``anisotropy_threshold`` times the smallest one."""
    spacing = np.asarray(spacing, dtype=float)
    return bool(spacing.max() / spacing.min() > anisotropy_threshold)


def get_lowres_axis(spacing: Sequence[float]) -> np.ndarray:
    """Indices of the axes whose spacing equals the maximum spacing (one index unless the maximum is shared)."""
    spacing = np.asarray(spacing, dtype=float)
    return np.where(spacing == spacing.max())[0]


def decide_separate_z(
    original_spacing: Sequence[float],
    target_spacing: Sequence[float],
    force_separate_z: bool | None = None,
    anisotropy_threshold: float = RESAMPLING_SEPARATE_Z_ANISO_THRESHOLD,
) -> tuple[bool, int | None]:
    """Whether to resample separately along one low-resolution axis, and which axis (spec §4.2).

    The original spacing decides first, then the target spacing; a maximum spacing shared by several axes
    disables separate-z.

    Args:
        original_spacing: Spacing of the input grid (same axis order as the data).
        target_spacing: Spacing of the output grid.
        force_separate_z: True/False to force the decision (axis from ``original_spacing``), None for the rule.
        anisotropy_threshold: Ratio max/min spacing above which a grid counts as anisotropic.

    Returns:
        ``(do_separate_z, axis)`` where ``axis`` is None when not separate.
    """
    if force_separate_z is not None:
        axes = get_lowres_axis(original_spacing) if force_separate_z else None
    elif get_do_separate_z(original_spacing, anisotropy_threshold):
        axes = get_lowres_axis(original_spacing)
    elif get_do_separate_z(target_spacing, anisotropy_threshold):
        axes = get_lowres_axis(target_spacing)
    else:
        axes = None
    if axes is None or len(axes) != 1:
        return False, None
    return True, int(axes[0])


def compute_new_shape(shape: Sequence[int], original_spacing: Sequence[float], target_spacing: Sequence[float]
                      ) -> tuple[int, ...]:
    """``round(original_spacing / target_spacing * shape)`` per axis."""
    ratio = np.asarray(original_spacing, dtype=float) / np.asarray(target_spacing, dtype=float)
    return tuple(int(v) for v in np.round(ratio * np.asarray(shape)).astype(int))


def _zoom(img: np.ndarray, new_shape: Sequence[int], order: int, output: type | None = None) -> np.ndarray:
    """``scipy.ndimage.zoom`` as scikit-image's ``resize(mode='edge', anti_aliasing=False)`` calls it."""
    factors = [1.0 / f for f in np.divide(img.shape, new_shape)]
    out = ndi.zoom(img, factors, output=output, order=order, mode="nearest", grid_mode=True)
    if out.shape != tuple(new_shape):  # pragma: no cover - guards a scipy rounding change
        raise AssertionError(f"zoom produced {out.shape}, expected {tuple(new_shape)}")
    return out


def resize_image(img: np.ndarray, new_shape: Sequence[int], order: int = 3) -> np.ndarray:
    """Resize one spatial image like ``skimage.transform.resize(img, new_shape, order, mode='edge', clip=True)``.

    Args:
        img: Spatial array (float32 or float64; other dtypes are computed in float32).
        new_shape: Output shape.
        order: Spline order (0-5).

    Returns:
        The resized array, same dtype as the (float) input, clipped to the input's value range when order > 0.
    """
    if img.dtype not in _NATIVE_FLOATS and order > 0:
        img = img.astype(np.float32)
    out = _zoom(img, new_shape, order)
    if order > 0:
        lo, hi = np.min(img), np.max(img)
        if np.isnan(lo):
            lo, hi = np.nanmin(img), np.nanmax(img)
        np.clip(out, lo, hi, out=out)
    return out


def resize_segmentation(seg: np.ndarray, new_shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resize a label map label by label (spec §4.2): label c where its interpolated mask is >= 0.5.

    Args:
        seg: Spatial integer (or integral float) label map; may contain -1.
        new_shape: Output shape.
        order: Interpolation order of the masks; 0 is plain nearest neighbour.

    Returns:
        Label map of ``new_shape`` with the dtype of ``seg``; voxels no label claims are 0.
    """
    if tuple(seg.shape) == tuple(new_shape):
        return seg.copy()
    if order == 0:
        return _zoom(seg, new_shape, 0)
    out = np.zeros(new_shape, dtype=seg.dtype)
    for label in np.unique(seg):
        mask = (seg == label).view(np.uint8)
        # float64 output, as resize() of a float mask gives; exact ties at 0.5 then fall as in nnU-Net
        frac = _zoom(mask, new_shape, order, output=np.float64)
        out[frac >= 0.5] = label
    return out


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of every output position when resampling one axis with order 0 (``map_coordinates``)."""
    scale = float(n_in) / n_out
    coords = scale * (np.arange(n_out, dtype=float) + 0.5) - 0.5
    src = ndi.map_coordinates(np.arange(n_in, dtype=float), coords[None], order=0, mode="nearest")
    return src.astype(np.intp)


def _resample_along_axis(vol: np.ndarray, new_shape: Sequence[int], axis: int, is_seg: bool, order_z: int
                         ) -> np.ndarray:
    """Resample one spatial volume along ``axis`` only (the other axes already have their new size)."""
    if order_z == 0:
        return np.take(vol, _nearest_indices(vol.shape[axis], new_shape[axis]), axis=axis)
    grids = np.mgrid[tuple(slice(0, s) for s in new_shape)].astype(float)
    for i, (n_in, n_out) in enumerate(zip(vol.shape, new_shape)):
        grids[i] = float(n_in) / n_out * (grids[i] + 0.5) - 0.5
    if not is_seg:
        return ndi.map_coordinates(vol, grids, order=order_z, mode="nearest")
    out = np.zeros(new_shape, dtype=vol.dtype)
    for label in np.unique(vol):
        frac = np.round(ndi.map_coordinates((vol == label).astype(float), grids, order=order_z, mode="nearest"))
        out[frac > 0.5] = label
    return out


def _resize_one(vol: np.ndarray, new_shape: Sequence[int], is_seg: bool, order: int) -> np.ndarray:
    return resize_segmentation(vol, new_shape, order) if is_seg else resize_image(vol, new_shape, order)


def resample_data_or_seg(
    data: np.ndarray,
    new_shape: Sequence[int],
    is_seg: bool,
    axis: int | Sequence[int] | None = None,
    order: int = 3,
    do_separate_z: bool = False,
    order_z: int = 0,
) -> np.ndarray:
    """Resample a channel-first array to ``new_shape`` (spec §4.2).

    Args:
        data: ``(C, *spatial)`` array: image channels, a segmentation (``is_seg``) or class probabilities.
        new_shape: Spatial output shape.
        is_seg: Resample as a label map (one-hot, see :func:`resize_segmentation`).
        axis: Low-resolution axis (spatial index, or a one-element sequence) for separate-z.
        order: In-plane interpolation order (all axes when not separate).
        do_separate_z: Resize slices orthogonal to ``axis`` in 2D, then resample along ``axis`` with ``order_z``.
        order_z: Interpolation order along ``axis`` when separate.

    Returns:
        ``(C, *new_shape)`` array with the dtype of ``data``; ``data`` itself if the shape is unchanged.
    """
    new_shape = tuple(int(s) for s in new_shape)
    shape = tuple(data.shape[1:])
    if len(new_shape) != len(shape):
        raise ValueError(f"new shape {new_shape} has not the dimensionality of the data's {shape}")
    if shape == new_shape:
        return data
    dtype = data.dtype
    if not is_seg and dtype not in _NATIVE_FLOATS:
        data = data.astype(np.float32)
    out = np.empty((data.shape[0], *new_shape), dtype=data.dtype)
    if do_separate_z:
        if axis is not None and not np.isscalar(axis):
            if len(axis) != 1:
                raise ValueError(f"separate-z needs exactly one low-resolution axis, got {list(axis)}")
            axis = axis[0]
        if axis is None:
            raise ValueError("separate-z needs the low-resolution axis")
        axis = int(axis)
        plane_shape = tuple(s for i, s in enumerate(new_shape) if i != axis)
        inplane_shape = list(new_shape)
        inplane_shape[axis] = shape[axis]
        for c in range(data.shape[0]):
            vol = data[c]
            if tuple(s for i, s in enumerate(shape) if i != axis) != plane_shape:
                slices = [_resize_one(np.take(vol, k, axis=axis), plane_shape, is_seg, order)
                          for k in range(shape[axis])]
                vol = np.stack(slices, axis=axis)
            if shape[axis] != new_shape[axis]:
                vol = _resample_along_axis(vol, new_shape, axis, is_seg, order_z)
            out[c] = vol
    else:
        for c in range(data.shape[0]):
            out[c] = _resize_one(data[c], new_shape, is_seg, order)
    return out.astype(dtype, copy=False)


def resample_patient(
    data: np.ndarray | None,
    seg: np.ndarray | None,
    original_spacing: Sequence[float],
    target_spacing: Sequence[float],
    order_data: int = 3,
    order_seg: int = 1,
    force_separate_z: bool | None = None,
    order_z_data: int = 0,
    order_z_seg: int = 0,
    separate_z_anisotropy_threshold: float = RESAMPLING_SEPARATE_Z_ANISO_THRESHOLD,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Resample a case's image channels and segmentation from one spacing to another (spec §4.2).

    Args:
        data: ``(C, *spatial)`` image channels or None.
        seg: ``(1, *spatial)`` segmentation or None.
        original_spacing: Spacing of the arrays (same axis order).
        target_spacing: Wanted spacing.
        order_data: Interpolation order of the image (3).
        order_seg: Interpolation order of the segmentation masks (1).
        force_separate_z: Force the separate-z decision (None: use the rule of :func:`decide_separate_z`).
        order_z_data: Order along the low-resolution axis for the image when separate.
        order_z_seg: Order along the low-resolution axis for the segmentation when separate.
        separate_z_anisotropy_threshold: Anisotropy ratio that triggers separate-z.

    Returns:
        ``(data, seg)`` resampled (inputs returned unchanged when the shape does not change).
    """
    ref = data if data is not None else seg
    if ref is None:
        raise ValueError("resample_patient needs data or seg")
    if seg is not None and data is not None and seg.shape[1:] != data.shape[1:]:
        raise ValueError(f"data {data.shape} and seg {seg.shape} have different spatial shapes")
    new_shape = compute_new_shape(ref.shape[1:], original_spacing, target_spacing)
    if new_shape == tuple(ref.shape[1:]):
        return data, seg
    separate, axis = decide_separate_z(original_spacing, target_spacing, force_separate_z,
                                       separate_z_anisotropy_threshold)
    if data is not None:
        data = resample_data_or_seg(data, new_shape, False, axis, order_data, separate, order_z_data)
    if seg is not None:
        seg = resample_data_or_seg(seg, new_shape, True, axis, order_seg, separate, order_z_seg)
    return data, seg
