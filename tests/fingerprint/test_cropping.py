"""Crop to the nonzero region (spec §2.1): stages/preprocess/cropping.py."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from stages.errors import DatasetError
from stages.imageio import Geometry
from stages.preprocess.cropping import (
    create_nonzero_mask,
    crop_to_bbox,
    crop_to_nonzero,
    get_bbox_from_mask,
    load_and_crop_case,
)


def test_nonzero_mask_is_union_of_channels_with_holes_filled():
    data = np.zeros((2, 6, 7, 8), np.float32)
    data[0, 1:4, 1:4, 1:4] = 1.0
    data[0, 2, 2, 2] = 0.0  # enclosed hole -> filled
    data[1, 5, 6, 7] = -3.0  # only channel 1, negative values count
    mask = create_nonzero_mask(data)
    assert mask.dtype == bool
    assert mask[2, 2, 2] and mask[5, 6, 7]
    assert mask.sum() == 27 + 1
    with pytest.raises(ValueError):
        create_nonzero_mask(np.zeros((4, 4)))


def test_bbox_is_half_open_and_empty_mask_keeps_everything():
    mask = np.zeros((5, 6, 7), bool)
    mask[1, 2, 3] = mask[3, 4, 3] = True
    assert get_bbox_from_mask(mask) == [[1, 4], [2, 5], [3, 4]]
    assert crop_to_bbox(np.arange(5 * 6 * 7).reshape(5, 6, 7), [[1, 4], [2, 5], [3, 4]]).shape == (3, 3, 1)
    assert get_bbox_from_mask(np.zeros((2, 3, 4), bool)) == [[0, 2], [0, 3], [0, 4]]


def test_crop_to_nonzero_marks_background_outside_mask():
    data = np.zeros((1, 6, 6, 6), np.float32)
    data[0, 1:5, 1:5, 1:5] = 5.0
    data[0, 1, 1, 1] = 0.0  # a zero on the bbox corner: not enclosed, stays outside the mask
    seg = np.zeros((1, 6, 6, 6), np.float32)
    seg[0, 2:4, 2:4, 2:4] = 1
    seg[0, 1, 1, 1] = 2  # foreground outside the mask keeps its label
    cropped, cseg, bbox = crop_to_nonzero(data, seg)
    assert bbox == [[1, 5], [1, 5], [1, 5]]
    assert cropped.shape == (1, 4, 4, 4) and cseg.shape == (1, 4, 4, 4)
    assert cseg[0, 0, 0, 0] == 2
    assert set(np.unique(cseg)) == {0, 1, 2}
    data[0, 1, 1, 2] = 0.0  # now a background voxel outside the mask inside the bbox
    _, cseg, _ = crop_to_nonzero(data, seg)
    assert cseg[0, 0, 0, 1] == -1
    assert (cseg == -1).sum() == 1


def test_crop_without_label_synthesizes_seg():
    data = np.zeros((1, 4, 4, 4), np.float32)
    data[0, 1:3, 1:3, 1:3] = 1
    data[0, 1, 1, 1] = 0
    _, seg, bbox = crop_to_nonzero(data, None)
    assert bbox == [[1, 3], [1, 3], [1, 3]]
    assert seg.shape == (1, 2, 2, 2)
    assert seg[0, 0, 0, 0] == -1 and (seg == 0).sum() == 7


def _write(path, arr, spacing_xyz, origin=(1.0, 2.0, 3.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


def test_load_and_crop_case_properties(tmp_path):
    img = np.zeros((10, 12, 14), np.int16)
    img[2:8, 3:9, 4:11] = 7
    img[2, 3, 4] = 0  # background corner voxel outside the mask
    lab = np.zeros((10, 12, 14), np.uint8)
    lab[4:6, 5:7, 6:8] = 1
    _write(tmp_path / "c_0000.nii.gz", img, (0.5, 0.8, 3.0))
    _write(tmp_path / "c_0001.nii.gz", (img * 2).astype(np.float32), (0.5, 0.8, 3.0))
    _write(tmp_path / "c.nii.gz", lab, (0.5, 0.8, 3.0))
    data, seg, props = load_and_crop_case([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"],
                                          tmp_path / "c.nii.gz")
    assert data.dtype == np.float32 and seg.dtype == np.float32
    assert data.shape == (2, 6, 6, 7) and seg.shape == (1, 6, 6, 7)
    assert props["original_size_of_raw_data"] == [10, 12, 14]
    assert props["original_spacing"] == pytest.approx([3.0, 0.8, 0.5])  # array order (z, y, x)
    assert isinstance(props["geometry"], Geometry)
    assert props["geometry"].spacing == pytest.approx((0.5, 0.8, 3.0))
    assert props["geometry"].origin == pytest.approx((1.0, 2.0, 3.0))
    assert props["crop_bbox"] == [[2, 8], [3, 9], [4, 11]]
    assert props["size_after_cropping"] == [6, 6, 7]
    assert props["classes"] == [-1, 0, 1]
    assert seg[0, 0, 0, 0] == -1
    np.testing.assert_array_equal(data[1], 2 * data[0])


def test_load_and_crop_case_rejects_mismatched_label(tmp_path):
    _write(tmp_path / "c_0000.nii.gz", np.ones((4, 5, 6), np.float32), (1.0, 1.0, 1.0))
    _write(tmp_path / "c.nii.gz", np.zeros((4, 5, 7), np.uint8), (1.0, 1.0, 1.0))
    with pytest.raises(DatasetError, match=r"c\.nii\.gz.*label shape"):
        load_and_crop_case([tmp_path / "c_0000.nii.gz"], tmp_path / "c.nii.gz")
