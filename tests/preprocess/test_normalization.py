"""Intensity normalization per scheme (spec §4.3)."""

from __future__ import annotations

import numpy as np
import pytest

from stages.errors import BadInputError
from stages.preprocess.normalization import normalize, normalize_channel
from tests.preprocess.conftest import CT_STATS

RNG = np.random.RandomState(1)


def _image_and_seg():
    img = (RNG.rand(6, 7, 8) * 200 - 20).astype(np.float32)
    seg = np.zeros((1, 6, 7, 8), np.float32)
    seg[0, :2] = -1  # outside the nonzero mask
    seg[0, 3:5, 2:5, 2:6] = 1
    return img, seg


def test_ct_clips_to_percentiles_and_uses_dataset_statistics():
    img, seg = _image_and_seg()
    out = normalize(img[None], seg, {0: "CT"}, {0: False}, {0: CT_STATS})[0]
    expected = (np.clip(img, CT_STATS.percentile_00_5, CT_STATS.percentile_99_5) - CT_STATS.mean) / CT_STATS.sd
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.min() == pytest.approx((0.0 - 100.0) / 20.0)  # values below -> clipped to percentile 0.5
    assert out.dtype == np.float32


def test_ct_with_mask_flag_zeros_outside():
    img, seg = _image_and_seg()
    out = normalize(img[None], seg, {0: "CT"}, {0: True}, {0: CT_STATS})[0]
    assert np.all(out[seg[0] < 0] == 0)
    inside = seg[0] >= 0
    np.testing.assert_allclose(out[inside], (np.clip(img, 0, 300)[inside] - 100) / 20, rtol=1e-6)


def test_ct_without_statistics_is_a_clear_error():
    img, seg = _image_and_seg()
    with pytest.raises(BadInputError, match="intensity statistics"):
        normalize(img[None], seg, {0: "CT"}, {0: False}, None)


def test_nonct_whole_image_z_score():
    img, seg = _image_and_seg()
    out = normalize(img[None], seg, {0: "nonCT"}, {0: False})[0]
    expected = (img.astype(np.float64) - img.mean(dtype=np.float64)) / (img.std(dtype=np.float64) + 1e-8)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert abs(out.mean()) < 1e-5 and out.std() == pytest.approx(1.0, abs=1e-5)


def test_nonct_masked_z_score_uses_mask_statistics_and_zeros_outside():
    img, seg = _image_and_seg()
    out = normalize(img[None], seg, {0: "nonCT"}, {0: True})[0]
    mask = seg[0] >= 0
    vals = img[mask].astype(np.float64)
    np.testing.assert_allclose(out[mask], (vals - vals.mean()) / (vals.std() + 1e-8), rtol=1e-5, atol=1e-6)
    assert np.all(out[~mask] == 0)
    assert out[mask].std() == pytest.approx(1.0, abs=1e-5)


def test_constant_image_gets_epsilon_not_nan():
    out = normalize_channel(np.full((3, 3, 3), 7.0, np.float32), "nonCT", False, None)
    assert np.all(out == 0) and np.isfinite(out).all()


def test_nonorm_untouched_and_channels_independent():
    img, seg = _image_and_seg()
    data = np.stack([img, img * 2 + 5])
    out = normalize(data, seg, {0: "noNorm", 1: "nonCT"}, {0: False, 1: True})
    np.testing.assert_array_equal(out[0], img)
    assert np.all(out[1][seg[0] < 0] == 0)


def test_unknown_scheme_and_missing_channel_rejected():
    img, seg = _image_and_seg()
    with pytest.raises(BadInputError, match="unknown normalization scheme"):
        normalize(img[None], seg, {0: "MRI"}, {0: False})
    with pytest.raises(BadInputError, match="channel 1"):
        normalize(np.stack([img, img]), seg, {0: "nonCT"}, {0: False})
