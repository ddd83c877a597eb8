"""Export of predictions in the input's geometry (spec §8.5, §8.6) and the export process pool."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from stages.imageio import Geometry, read_image
from stages.predict.export import (
    ExportPool,
    export_prediction,
    load_softmax,
    probabilities_to_segmentation,
    sidecar_paths,
)
from stages.preprocess.models import CaseProperties

K = 3
ORIGINAL = (26, 30, 9)  # array order (z, y, x)
BBOX = [[3, 23], [4, 28], [2, 8]]  # not at the origin
CROPPED = (20, 24, 6)
SPACING = (1.0, 1.0, 4.0)  # array order: x is the low-resolution axis
TRANSPOSE_FORWARD = [2, 0, 1]  # x first, as the planner transposes the low-resolution axis to the front
TRANSPOSE_BACKWARD = [1, 2, 0]


@pytest.fixture
def input_geometry(tmp_path) -> Geometry:
    """Geometry of a real image file with rotated direction, odd origin and anisotropic spacing."""
    img = sitk.GetImageFromArray(np.zeros(ORIGINAL, np.float32))
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    img.SetOrigin((-12.5, 30.25, 7.0))
    img.SetSpacing(tuple(reversed(SPACING)))
    path = tmp_path / "input_0000.nii.gz"
    sitk.WriteImage(img, str(path))
    return read_image(path)[1]


def _props(geometry: Geometry, after_resampling: tuple[int, ...], spacing_after: list[float]) -> CaseProperties:
    return CaseProperties(
        case_id="case_007",
        geometry=geometry,
        original_size_of_raw_data=list(ORIGINAL),
        original_spacing=list(SPACING),
        crop_bbox=BBOX,
        size_after_cropping=list(CROPPED),
        classes=[0, 1, 2],
        size_after_resampling=list(after_resampling),
        spacing_after_resampling=spacing_after,
        class_locations={1: [[0, 1, 2]], 2: []},
    )


def _blocky_labels() -> np.ndarray:
    """Labels on the cropped grid made of 2-voxel aligned blocks (survive a 2x down/up sampling)."""
    lab = np.zeros(CROPPED, np.uint8)
    lab[2:12, 4:16, 1:4] = 1
    lab[12:18, 10:22, 2:6] = 2
    return lab


def _one_hot_preprocessed(lab: np.ndarray, noise: float = 0.0) -> np.ndarray:
    probs = np.stack([(lab == k).astype(np.float32) for k in range(K)])
    probs = probs.transpose([0, *[a + 1 for a in TRANSPOSE_FORWARD]])
    if noise:
        probs = probs + np.random.RandomState(0).uniform(0, noise, probs.shape).astype(np.float32)
        probs /= probs.sum(0, keepdims=True)
    return np.ascontiguousarray(probs)


def _expected_full(lab: np.ndarray) -> np.ndarray:
    full = np.zeros(ORIGINAL, np.uint8)
    full[tuple(slice(a, b) for a, b in BBOX)] = lab
    return full


def test_segmentation_without_resampling_is_transposed_back_and_pasted(input_geometry):
    lab = _blocky_labels()
    probs = _one_hot_preprocessed(lab, noise=0.3)
    props = _props(input_geometry, probs.shape[1:], [4.0, 1.0, 1.0])
    seg, cropped = probabilities_to_segmentation(probs, props, TRANSPOSE_BACKWARD)
    assert seg.dtype == np.uint8 and seg.shape == ORIGINAL
    np.testing.assert_array_equal(seg, _expected_full(lab))
    assert cropped.shape == (K, *CROPPED)


def test_export_geometry_round_trip_with_anisotropic_resampling(tmp_path, input_geometry):
    lab = _blocky_labels()
    full_res = _one_hot_preprocessed(lab)  # (K, x=6, z=20, y=24)
    k, a0, a1, a2 = full_res.shape
    probs = full_res.reshape(k, a0, a1 // 2, 2, a2 // 2, 2).mean(axis=(3, 5))  # preprocessed at 2 mm in-plane
    props = _props(input_geometry, probs.shape[1:], [4.0, 2.0, 2.0])
    out = tmp_path / "out" / "case_007.nii.gz"
    written = export_prediction(probs, props, out, TRANSPOSE_BACKWARD, save_npz=True)
    npz_file, json_file = sidecar_paths(out)
    assert written == [out, npz_file, json_file]

    seg, geometry = read_image(out)
    assert geometry == input_geometry  # spacing, origin, direction and size exactly
    assert seg.dtype == np.uint8
    expected = _expected_full(lab)
    assert not seg[~_inside_bbox()].any()  # nothing outside the crop box
    assert (seg == expected).mean() > 0.97  # only block borders may move under 2x down/up sampling
    for label in (1, 2):
        inter = np.logical_and(seg == label, expected == label).sum()
        assert 2 * inter / ((seg == label).sum() + (expected == label).sum()) > 0.9

    softmax = load_softmax(npz_file)
    assert softmax.dtype == np.float16 and softmax.shape == (K, *ORIGINAL)
    outside = ~_inside_bbox()
    assert np.all(softmax[0][outside] == 1) and not softmax[1:, outside].any()
    np.testing.assert_allclose(softmax.astype(np.float32).sum(0), 1.0, atol=3e-3)
    agree = np.argmax(softmax, axis=0) == seg
    assert agree.mean() > 0.995  # float16 rounding may flip exact ties only

    saved = CaseProperties.load(json_file)
    assert saved.class_locations == {}
    assert saved.model_dump(exclude={"class_locations"}) == props.model_dump(exclude={"class_locations"})


def _inside_bbox() -> np.ndarray:
    inside = np.zeros(ORIGINAL, bool)
    inside[tuple(slice(a, b) for a, b in BBOX)] = True
    return inside


def test_export_rejects_a_mismatching_shape(tmp_path, input_geometry):
    probs = _one_hot_preprocessed(_blocky_labels())
    props = _props(input_geometry, (5, 5, 5), [4.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="case_007"):
        export_prediction(probs, props, tmp_path / "x.nii.gz", TRANSPOSE_BACKWARD)


@pytest.mark.parametrize("workers", [0, 1])
def test_export_pool_writes_cases_and_cleans_temporary_files(tmp_path, input_geometry, workers):
    lab = _blocky_labels()
    probs = _one_hot_preprocessed(lab, noise=0.2)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with ExportPool(workers=workers, max_pending=1, scratch_dir=scratch, inline_limit=0) as pool:
        for i in range(3):
            props = _props(input_geometry, probs.shape[1:], [4.0, 1.0, 1.0]).model_copy(
                update={"case_id": f"c{i}"})
            pool.submit(probs, props, tmp_path / "out" / f"c{i}.nii.gz", TRANSPOSE_BACKWARD, save_npz=i == 0)
    written = pool.wait()
    assert sorted(p.name for p in written) == ["c0.json", "c0.nii.gz", "c0.npz", "c1.nii.gz", "c2.nii.gz"]
    for i in range(3):
        np.testing.assert_array_equal(read_image(tmp_path / "out" / f"c{i}.nii.gz")[0], _expected_full(lab))
    assert list(scratch.iterdir()) == []


def test_export_pool_propagates_errors(tmp_path, input_geometry):
    probs = _one_hot_preprocessed(_blocky_labels())
    bad = _props(input_geometry, (5, 5, 5), [4.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="case_007"):
        with ExportPool(workers=1) as pool:
            pool.submit(probs, bad, tmp_path / "bad.nii.gz", TRANSPOSE_BACKWARD)
    assert not (tmp_path / "bad.nii.gz").exists()
