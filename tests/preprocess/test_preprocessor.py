"""One case through preprocessing and back (spec §4, §8.5), on synthetic anisotropic cases and real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from stages.preprocess.cropping import load_and_crop_case
from stages.preprocess.preprocessor import (
    PreprocessParams,
    is_case_complete,
    load_case,
    preprocess_case,
    save_case,
    training_cases,
)
from stages.preprocess.resampling import compute_new_shape
from stages.preprocess.revert import paste_into_original, revert_preprocessing, revert_probabilities
from tests.factories import make_case, write_nnunet_task
from tests.preprocess.conftest import make_plans

# name: (array shape, array spacing, transpose_forward, target spacing (transposed), dimension)
SCENARIOS = {
    # z of the array is x here: low resolution on the last array axis, moved first by the transposition;
    # spacing ratio 3.6 > 3 -> separate-z resampling
    "anisotropic": ((40, 30, 12), (1.0, 1.0, 3.6), (2, 0, 1), (3.0, 0.9, 0.9), "3D"),
    "isotropic": ((24, 28, 24), (1.5, 1.5, 1.5), (0, 1, 2), (1.2, 1.2, 1.2), "3D"),
    "coarser": ((24, 28, 24), (1.0, 1.0, 1.0), (0, 1, 2), (1.3, 1.3, 1.3), "3D"),
    # 2D: axis 0 keeps each case's own spacing whatever the plans say
    "2d": ((12, 40, 30), (3.6, 1.0, 1.0), (0, 1, 2), (99.0, 0.8, 0.8), "2D"),
}


def _write_case(root: Path, name: str, shape, spacing, seed=3, ball_mask=False):
    case = make_case(name, shape=shape, spacing=spacing, zero_border=2, seed=seed)
    if ball_mask:  # nonzero region not a box: the crop keeps zero corners that become -1 in the seg
        grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
        outside = sum(g**2 for g in grids) > 0.9
        case.images[0][outside] = 0
        case.label[outside] = 0
    write_nnunet_task(root, [case])
    return [root / "imagesTr" / f"{name}_0000.nii.gz"], root / "labelsTr" / f"{name}.nii.gz"


def _original_label(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_round_trip_restores_labels_with_planned_shapes(tmp_path, name):
    shape, spacing, tf, target, dim = SCENARIOS[name]
    images, label = _write_case(tmp_path, name, shape, spacing)
    plans = make_plans(spacing=target, transpose_forward=tf, dimension=dim)
    params = PreprocessParams.from_plans(plans, 0)
    data, seg, props = preprocess_case(images, label, params)

    _, cropped_seg, crop_props = load_and_crop_case(images, label)
    spacing_t = [props.original_spacing[a] for a in tf]
    expected_target = [spacing_t[0], *target[1:]] if dim == "2D" else list(target)
    np.testing.assert_allclose(props.spacing_after_resampling, expected_target)
    cropped_t = [crop_props["size_after_cropping"][a] for a in tf]
    expected_shape = compute_new_shape(cropped_t, spacing_t, expected_target)
    assert data.shape == (1, *expected_shape) and seg.shape == (1, *expected_shape)
    assert props.size_after_resampling == list(expected_shape)
    if dim == "2D":
        assert expected_shape[0] == cropped_t[0]
    assert data.dtype == np.float32 and seg.dtype == np.int8
    # no label lost by resampling
    assert set(np.unique(cropped_seg)) <= set(np.unique(seg))

    restored = revert_preprocessing(seg, props, plans)
    original = _original_label(label)
    assert restored.shape == original.shape
    assert (restored == original).mean() >= 0.995


def test_nonzero_mask_minus_one_normalization_and_test_time(tmp_path):
    images, label = _write_case(tmp_path, "ball", (24, 28, 24), (1.0, 1.0, 1.0), ball_mask=True)
    plans = make_plans(spacing=(1.0, 1.0, 1.0), use_mask={0: True})
    params = PreprocessParams.from_plans(plans, 0)
    data, seg, props = preprocess_case(images, label, params)
    outside = seg[0] == -1
    assert outside.any() and -1 in props.classes
    assert np.all(data[0][outside] == 0)
    inside = data[0][~outside]
    assert abs(inside.mean()) < 1e-4 and inside.std() == pytest.approx(1.0, abs=1e-4)
    # test time: no label, same data (the synthesized 0 / -1 seg gives the same mask)
    data_t, seg_t, props_t = preprocess_case(images, None, params)
    assert seg_t is None and props_t.class_locations == {} and props_t.case_id == "ball"
    np.testing.assert_array_equal(data_t, data)
    # reverting maps -1 (outside the mask) to background
    np.testing.assert_array_equal(revert_preprocessing(seg, props, params), _original_label(label))


def test_class_locations_index_the_transposed_segmentation(tmp_path):
    shape, spacing, tf, target, dim = SCENARIOS["anisotropic"]
    images, label = _write_case(tmp_path, "loc", shape, spacing)
    params = PreprocessParams.from_plans(make_plans(spacing=target, transpose_forward=tf), 0)
    _, seg, props = preprocess_case(images, label, params)
    for c in (1, 2):
        locs = np.asarray(props.class_locations[c])
        assert len(locs) == min(10000, int((seg[0] == c).sum()))
        assert np.all(seg[0][tuple(locs.T)] == c)
    _, _, again = preprocess_case(images, label, params)
    assert again.class_locations == props.class_locations


def test_probabilities_revert_with_full_size_paste(tmp_path):
    shape, spacing, tf, target, dim = SCENARIOS["anisotropic"]
    images, label = _write_case(tmp_path, "prob", shape, spacing)
    plans = make_plans(spacing=target, transpose_forward=tf)
    _, seg, props = preprocess_case(images, label, PreprocessParams.from_plans(plans, 0))
    probs = np.stack([np.maximum(seg[0], 0) == c for c in range(3)]).astype(np.float32)
    cropped = revert_probabilities(probs, props, plans)
    assert cropped.shape == (3, *props.size_after_cropping)
    full = revert_probabilities(probs, props, plans.transpose_backward, full_size=True)
    assert full.shape == (3, *props.original_size_of_raw_data)
    box = tuple(slice(lo, hi) for lo, hi in props.crop_bbox)
    outside = np.ones(props.original_size_of_raw_data, bool)
    outside[box] = False
    assert outside.any() and np.all(full[0][outside] == 1) and np.all(full[1:, outside] == 0)
    assert (full.argmax(0) == _original_label(label)).mean() >= 0.995
    np.testing.assert_array_equal(paste_into_original(cropped, props, [1, 0, 0]), full)


def test_save_load_and_completeness(tmp_path):
    images, label = _write_case(tmp_path / "raw", "io", (24, 28, 24), (1.0, 1.0, 1.0))
    params = PreprocessParams.from_plans(make_plans(), 0)
    data, seg, props = preprocess_case(images, label, params)
    out = tmp_path / "stage"
    assert not is_case_complete(out, "io", params.digest())
    save_case(out, "io", data, seg, props)
    assert sorted(p.name for p in out.iterdir()) == ["io.json", "io.npy", "io_seg.npy"]
    assert is_case_complete(out, "io", params.digest())
    assert not is_case_complete(out, "io", PreprocessParams.from_plans(make_plans((2.0, 2.0, 2.0)), 0).digest())
    d, s, p = load_case(out, "io")
    assert isinstance(d, np.memmap) and d.dtype == np.float32 and s.dtype == np.int8
    np.testing.assert_array_equal(d, data)
    np.testing.assert_array_equal(s, seg)
    assert p == props
    d2, _, _ = load_case(out, "io", mmap=False)
    assert not isinstance(d2, np.memmap)
    (out / "io_seg.npy").write_bytes(b"truncated")
    assert not is_case_complete(out, "io", params.digest())


def test_hippocampus_round_trip(hippocampus):
    cases = training_cases(hippocampus)
    assert len(cases) == 208 and all(len(images) == 1 for images, _ in cases.values())
    plans = make_plans(spacing=(1.0, 1.0, 1.0))
    params = PreprocessParams.from_plans(plans, 0)
    for case_id in sorted(cases)[::26]:
        images, label = cases[case_id]
        data, seg, props = preprocess_case(images, label, params, case_id)
        assert props.case_id == case_id
        # 1 mm isotropic data at a 1 mm target: the cropped size is kept
        assert props.size_after_resampling == props.size_after_cropping == list(data.shape[1:])
        original = _original_label(label)
        assert set(np.unique(original)) <= set(np.unique(seg)) | {0}
        restored = revert_preprocessing(seg, props, plans)
        assert (restored == original).mean() >= 0.995
        assert np.isfinite(data).all() and abs(float(data.mean())) < 1e-3
