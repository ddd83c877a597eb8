"""Crop a case to the bounding box of its non-zero region (spec §2.1).

The nonzero mask is the union over modalities of ``value != 0`` with holes filled. Every modality and the label
are cropped to the mask's bounding box; in the cropped label, background voxels outside the mask become ``-1``
so that later stages know which voxels lie outside the imaged region. Arrays are ``(C, z, y, x)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import binary_fill_holes

from stages.errors import DatasetError
from stages.imageio import read_image

log = logging.getLogger(__name__)

#: Label value given to background voxels outside the nonzero mask.
NONZERO_LABEL = -1


def create_nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Mask of voxels that are non-zero in any channel, with enclosed holes filled.

    Args:
        data: Array ``(C, z, y, x)`` (or ``(C, y, x)``).

    Returns:
        Boolean array of the spatial shape.
    """
    if data.ndim not in (3, 4):
        raise ValueError(f"data must have shape (C, z, y, x) or (C, y, x), got {data.shape}")
    mask = np.zeros(data.shape[1:], dtype=bool)
    for channel in data:
        mask |= channel != 0
    return binary_fill_holes(mask)


def get_bbox_from_mask(mask: np.ndarray, outside_value: int = 0) -> list[list[int]]:
    """Half-open bounding box ``[[start, stop), ...]`` per axis of the voxels of ``mask`` != ``outside_value``.

    An empty mask gives the full extent of the array (nothing can be cropped).
    """
    coords = np.nonzero(mask != outside_value)
    if coords[0].size == 0:
        return [[0, int(s)] for s in mask.shape]
    return [[int(c.min()), int(c.max()) + 1] for c in coords]


def crop_to_bbox(image: np.ndarray, bbox: Sequence[Sequence[int]]) -> np.ndarray:
    """Crop the spatial array ``image`` (one channel) to the half-open ``bbox``."""
    if image.ndim != len(bbox):
        raise ValueError(f"bbox has {len(bbox)} axes but the image has shape {image.shape}")
    return image[tuple(slice(int(lo), int(hi)) for lo, hi in bbox)]


def crop_to_nonzero(
    data: np.ndarray, seg: np.ndarray | None = None, nonzero_label: int = NONZERO_LABEL
) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Crop image channels and label to the nonzero region.

    Args:
        data: Image array ``(C, z, y, x)``.
        seg: Label array ``(1, z, y, x)`` or None.
        nonzero_label: Value for background voxels outside the nonzero mask.

    Returns:
        ``(data, seg, bbox)``: the cropped image, the cropped label (background outside the mask set to
        ``nonzero_label``; without a label, 0 inside the mask and ``nonzero_label`` outside) and the bounding box.
    """
    mask = create_nonzero_mask(data)
    bbox = get_bbox_from_mask(mask)
    cropped = np.stack([crop_to_bbox(c, bbox) for c in data])
    mask = crop_to_bbox(mask, bbox)[None]
    if seg is not None:
        if seg.shape[1:] != data.shape[1:]:
            raise ValueError(f"label shape {seg.shape[1:]} differs from image shape {data.shape[1:]}")
        seg = np.stack([crop_to_bbox(c, bbox) for c in seg])
        seg[(seg == 0) & ~mask] = nonzero_label
    else:
        seg = np.where(mask, 0, nonzero_label).astype(np.float32)
    return cropped, seg, bbox


def load_case(
    image_files: Sequence[str | Path], label_file: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read all modalities of a case (and its label) as float32 arrays; no cropping.

    Args:
        image_files: One file per modality, in modality order.
        label_file: Label file or None.

    Returns:
        ``(data (C, z, y, x), seg (1, z, y, x) or None, properties)`` with ``original_size_of_raw_data``,
        ``original_spacing`` (array order), ``geometry``, ``list_of_data_files`` and ``seg_file``.

    Raises:
        DatasetError: If the modalities or the label do not share one voxel grid.
    """
    if not image_files:
        raise DatasetError("a case needs at least one image file")
    arrays, geometry = [], None
    for f in image_files:
        arr, geo = read_image(f, dtype=np.float32)
        if arr.ndim != 3:
            raise DatasetError(f"{f}: expected a 3D image, got {arr.ndim}D with shape {arr.shape}")
        if geometry is not None and arr.shape != arrays[0].shape:
            raise DatasetError(f"{f}: shape {arr.shape} differs from {image_files[0]} {arrays[0].shape}")
        arrays.append(arr)
        geometry = geometry or geo
    seg = None
    if label_file is not None:
        lab, _ = read_image(label_file, dtype=np.float32)
        if lab.shape != arrays[0].shape:
            raise DatasetError(f"{label_file}: label shape {lab.shape} differs from image shape {arrays[0].shape}")
        seg = lab[None]
    properties: dict[str, Any] = {
        "original_size_of_raw_data": [int(s) for s in geometry.array_shape],
        "original_spacing": [float(s) for s in geometry.array_spacing],
        "geometry": geometry,
        "list_of_data_files": [str(f) for f in image_files],
        "seg_file": None if label_file is None else str(label_file),
    }
    return np.stack(arrays), seg, properties


def load_and_crop_case(
    image_files: Sequence[str | Path], label_file: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a case and crop it to its nonzero region (spec §2.1).

    Args:
        image_files: One file per modality, in modality order.
        label_file: Label file or None (a seg of 0 inside / -1 outside the mask is synthesized).

    Returns:
        ``(data float32 (C, z, y, x), seg float32 (1, z, y, x), properties)``; properties hold
        ``original_size_of_raw_data``, ``original_spacing`` (array order), ``geometry`` (:class:`Geometry`),
        ``list_of_data_files``, ``seg_file``, ``crop_bbox``, ``classes`` (unique cropped seg values, may contain
        -1) and ``size_after_cropping``.
    """
    data, seg, properties = load_case(image_files, label_file)
    shape_before = data.shape
    data, seg, bbox = crop_to_nonzero(data, seg, NONZERO_LABEL)
    properties["crop_bbox"] = bbox
    properties["classes"] = [int(v) for v in np.unique(seg)]
    seg[seg < NONZERO_LABEL] = 0
    properties["size_after_cropping"] = [int(s) for s in data.shape[1:]]
    log.debug("cropped %s from %s to %s", image_files[0], shape_before[1:], data.shape[1:])
    return data.astype(np.float32, copy=False), seg.astype(np.float32, copy=False), properties
