"""Resampling: equivalence with scikit-image resize, one-hot segmentation, separate-z (spec §4.2)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import map_coordinates
from skimage.transform import resize

from stages.preprocess.resampling import (
    compute_new_shape,
    decide_separate_z,
    get_do_separate_z,
    get_lowres_axis,
    resample_data_or_seg,
    resample_patient,
    resize_segmentation,
)

RNG = np.random.RandomState(0)
IMAGE = (RNG.rand(2, 7, 20, 23) * 100 - 30).astype(np.float32)


def _label_map(shape=(7, 20, 23)):
    seg = np.zeros((1, *shape), np.float32)
    seg[0, 2:5, 5:15, 4:19] = 1
    seg[0, 3:5, 8:12, 6:10] = 2
    seg[0, 0, :3] = -1
    return seg


def _skimage_seg(seg, new_shape, order=1):
    """Reference one-hot resize of the spec: label where the resized mask >= 0.5, labels in ascending order."""
    out = np.zeros(new_shape, seg.dtype)
    for c in np.unique(seg):
        frac = resize((seg == c).astype(float), new_shape, order, mode="edge", clip=True, anti_aliasing=False)
        out[frac >= 0.5] = c
    return out


def _reference_separate(data, new_shape, is_seg, axis, order):
    """Slice-wise skimage resize, then order-0 map_coordinates along ``axis`` with pixel-centre coordinates."""
    plane = [s for i, s in enumerate(new_shape) if i != axis]
    out = []
    for c in range(data.shape[0]):
        slices = []
        for k in range(data.shape[axis + 1]):
            sl = np.take(data[c], k, axis=axis)
            slices.append(_skimage_seg(sl, plane, order) if is_seg
                          else resize(sl.astype(float), plane, order, mode="edge", anti_aliasing=False))
        vol = np.stack(slices, axis)
        grid = np.mgrid[tuple(slice(0, s) for s in new_shape)].astype(float)
        for i in range(3):
            grid[i] = vol.shape[i] / new_shape[i] * (grid[i] + 0.5) - 0.5
        out.append(map_coordinates(vol, grid, order=0, mode="nearest"))
    return np.stack(out).astype(data.dtype)


@pytest.mark.parametrize("new_shape", [(12, 31, 17), (7, 10, 40), (3, 5, 6)])
@pytest.mark.parametrize("order", [0, 1, 3])
def test_image_resize_equals_skimage(new_shape, order):
    ref = np.stack([resize(c.astype(float), new_shape, order, mode="edge", anti_aliasing=False) for c in IMAGE])
    got = resample_data_or_seg(IMAGE, new_shape, is_seg=False, order=order)
    assert got.dtype == np.float32 and got.shape == (2, *new_shape)
    np.testing.assert_allclose(got, ref.astype(np.float32), rtol=0, atol=1e-4)
    # order 3 overshoots are clipped to the input's range, as skimage's clip=True does
    assert got.min() >= IMAGE.min() and got.max() <= IMAGE.max()


@pytest.mark.parametrize("new_shape", [(12, 31, 17), (7, 10, 40), (4, 9, 8)])
@pytest.mark.parametrize("order", [0, 1])
def test_segmentation_resize_equals_one_hot_reference(new_shape, order):
    seg = _label_map()
    got = resample_data_or_seg(seg, new_shape, is_seg=True, order=order)
    assert got.dtype == seg.dtype
    np.testing.assert_array_equal(got[0], _skimage_seg(seg[0], new_shape, order))
    assert set(np.unique(got)) <= set(np.unique(seg))  # never an interpolated, in-between label


def test_one_hot_keeps_thin_structures_linear_interpolation_would_merge():
    # 0 | 2 next to each other: plain linear interpolation of the values would create 1s in between
    seg = np.zeros((4, 4, 8), np.int8)
    seg[..., 4:] = 2
    out = resize_segmentation(seg, (4, 4, 16), order=1)
    assert set(np.unique(out)) == {0, 2}


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("new_shape", [(12, 31, 17), (3, 9, 8), (17, 13, 50)])
def test_separate_z_equals_slicewise_reference(axis, new_shape):
    got = resample_data_or_seg(IMAGE, new_shape, False, axis=axis, order=3, do_separate_z=True, order_z=0)
    np.testing.assert_allclose(got, _reference_separate(IMAGE, new_shape, False, axis, 3), atol=1e-4, rtol=0)
    seg = _label_map()
    got_seg = resample_data_or_seg(seg, new_shape, True, axis=[axis], order=1, do_separate_z=True, order_z=0)
    np.testing.assert_array_equal(got_seg, _reference_separate(seg, new_shape, True, axis, 1))


def test_separate_z_copies_whole_slices_along_the_low_resolution_axis():
    data = np.repeat(np.arange(5, dtype=np.float32)[:, None, None], 8, 1).repeat(8, 2)[None]  # slice k == k
    out = resample_data_or_seg(data, (10, 8, 8), False, axis=0, order=3, do_separate_z=True, order_z=0)
    # order 0 along z: every output slice is one input slice, no blending of neighbours
    for k in range(10):
        values = np.unique(out[0, k])
        assert len(values) == 1 and values[0] in range(5)
    assert list(np.unique(out)) == [0, 1, 2, 3, 4]
    joint = resample_data_or_seg(data, (10, 8, 8), False, order=3, do_separate_z=False)
    assert len(np.unique(np.round(joint, 3))) > 5  # the joint order-3 path interpolates between slices


def test_separate_z_decision_rules():
    assert get_do_separate_z([3.1, 1, 1]) and not get_do_separate_z([3.0, 1, 1])
    assert list(get_lowres_axis([1, 5, 1])) == [1]
    assert list(get_lowres_axis([2, 2, 1])) == [0, 1]
    assert decide_separate_z([1, 1, 5], [1, 1, 1]) == (True, 2)
    # original isotropic, target anisotropic: the axis comes from the target
    assert decide_separate_z([1, 1, 1], [1, 4, 1]) == (True, 1)
    assert decide_separate_z([1, 1, 2], [1, 1, 1]) == (False, None)
    # the maximum spacing shared by two axes disables separate-z
    assert decide_separate_z([5, 5, 1], [1, 1, 1]) == (False, None)
    assert decide_separate_z([1, 1, 2], [1, 1, 1], force_separate_z=True) == (True, 2)
    assert decide_separate_z([1, 1, 5], [1, 1, 1], force_separate_z=False) == (False, None)


def test_resample_patient_uses_separate_z_for_anisotropic_spacing():
    data, seg = IMAGE[:1], _label_map()
    d, s = resample_patient(data, seg, [5.0, 1.0, 1.0], [2.5, 0.8, 0.8])
    assert d.shape[1:] == s.shape[1:] == compute_new_shape(data.shape[1:], [5.0, 1.0, 1.0], [2.5, 0.8, 0.8])
    expected = resample_data_or_seg(data, d.shape[1:], False, axis=0, order=3, do_separate_z=True)
    np.testing.assert_array_equal(d, expected)
    np.testing.assert_array_equal(s, resample_data_or_seg(seg, d.shape[1:], True, 0, 1, True))


def test_unchanged_shape_does_no_work():
    data, seg = IMAGE[:1], _label_map()
    d, s = resample_patient(data, seg, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert d is data and s is seg
    assert resample_data_or_seg(data, data.shape[1:], False) is data


def test_probabilities_resample_as_data_with_order_1():
    label = np.maximum(_label_map()[0], 0)
    probs = np.stack([label == c for c in (0, 1, 2)]).astype(np.float16)
    out = resample_data_or_seg(probs, (14, 30, 30), False, order=1)
    assert out.dtype == np.float16
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(out.astype(np.float32).sum(0), 1.0, atol=2e-3)
