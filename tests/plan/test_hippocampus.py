"""Acceptance on the real MSD Hippocampus data: fingerprint + plans equal the reference planner's results."""

from __future__ import annotations

import json
import os
import time

import pytest

from stages.fingerprint.extract import extract_fingerprint
from stages.plan.experiment import plan_experiment


@pytest.fixture(scope="module")
def hippo_fingerprint(hippocampus, tmp_path_factory):
    """Fingerprint of a v1-layout view (imagesTr/<case>_0000.nii.gz symlinks) of the 208 MSD cases."""
    view = tmp_path_factory.mktemp("Task004_Hippocampus")
    (view / "imagesTr").mkdir()
    os.symlink(hippocampus / "labelsTr", view / "labelsTr")
    dj = json.loads((hippocampus / "dataset.json").read_text())
    for entry in dj["training"]:
        name = os.path.basename(entry["image"])
        case = name[: -len(".nii.gz")]
        os.symlink(hippocampus / "imagesTr" / name, view / "imagesTr" / f"{case}_0000.nii.gz")
    (view / "dataset.json").write_text(json.dumps(dj))
    start = time.monotonic()
    fp = extract_fingerprint(view, num_processes=2)
    return fp, time.monotonic() - start


def test_fingerprint_is_fast_and_complete(hippo_fingerprint):
    fp, seconds = hippo_fingerprint
    assert seconds < 30
    assert len(fp.cases) == 208
    assert fp.modalities == {0: "MRI"} and fp.all_classes == [1, 2]
    assert all(c.spacing == pytest.approx([1.0, 1.0, 1.0]) for c in fp.cases)


def test_plans_match_reference(hippo_fingerprint):
    fp, _ = hippo_fingerprint
    p3, p2 = plan_experiment(fp)
    assert p3.num_stages == 1 and not p3.has_cascade
    full = p3.configuration("3d_fullres")
    assert full.patch_size == [40, 56, 40]
    assert full.batch_size == 7
    assert full.current_spacing == pytest.approx([1.0, 1.0, 1.0])
    assert full.num_pool_per_axis == [3, 3, 3]
    assert full.median_patient_size_in_voxels == [36, 50, 35]
    two = p2.configuration("2d")
    assert two.patch_size == [56, 40]
    assert two.batch_size == 292
    for plans in (p3, p2):
        assert plans.normalization_schemes == {0: "nonCT"}
        assert plans.use_mask_for_norm == {0: False}
        assert plans.intensity_properties is None
