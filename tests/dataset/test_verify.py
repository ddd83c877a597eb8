"""verify_dataset: a clean dataset passes; every defect of the corpus is reported by case, file and problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from stages.dataset.verify import Problem, VerificationReport, format_report, verify_dataset
from tests.dataset.corpus import DEFECTS, N_MODALITIES, _image, _label, tree_digest, write_base, write_volume
from tests.factories import make_cases, write_nnunet_task


@pytest.fixture
def base(tmp_path):
    return write_base(tmp_path / "Task501_Synthetic")


def _matches(p: Problem, case, file, text) -> bool:
    return p.case == case and p.file == file and text in p.problem


def test_clean_dataset_passes(base):
    report = verify_dataset(base, workers=2)
    assert report.ok, format_report(report)
    assert report.problems == []
    assert (report.num_training_cases, report.num_test_cases, report.num_modalities) == (3, 2, N_MODALITIES)
    assert report.num_files_checked == 3 * (N_MODALITIES + 1) + 2 * N_MODALITIES
    assert format_report(report).splitlines()[-1].startswith("OK: no problems")


def test_corpus_is_large_and_distinct():
    assert len(DEFECTS) >= 20
    assert len({d.name for d in DEFECTS}) == len(DEFECTS)


@pytest.mark.parametrize("defect", DEFECTS, ids=[d.name for d in DEFECTS])
def test_defect_is_reported_and_folder_untouched(base, defect):
    defect.apply(base)
    before = tree_digest(base)
    report = verify_dataset(base, workers=2)
    after = tree_digest(base)
    assert before == after, "verification changed the dataset folder"
    assert not report.ok
    assert any(_matches(p, defect.case, defect.file, defect.text) for p in report.problems), (
        f"expected ({defect.case}, {defect.file}, ...{defect.text}...) in:\n{format_report(report)}"
    )
    line = next(p.line() for p in report.problems if _matches(p, defect.case, defect.file, defect.text))
    assert format_report(report).count(line) == 1
    assert all(p.problem for p in report.problems)


def test_several_defects_are_all_reported(base):
    chosen = {"image_missing", "image_inf", "label_undeclared_value", "stray_image", "truncated_gzip",
              "duplicate_case", "labels_not_consecutive", "test_modality_missing", "case_id_dotdot"}
    applied = [d for d in DEFECTS if d.name in chosen]
    assert len(applied) == len(chosen)
    for defect in applied:
        defect.apply(base)
    report = verify_dataset(base, workers=2)
    for defect in applied:
        assert any(_matches(p, defect.case, defect.file, defect.text) for p in report.problems), defect.name
    cases = set(report.cases_with_problems)
    assert {"case_001", "case_002", "extra_999", "test_001", "../evil"} <= cases
    assert format_report(report).splitlines()[-1].startswith(f"FAILED: {len(report.problems)} problems")


def test_geometry_within_tolerance_passes(base):
    rel = _image("case_000", 1)
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(base / rel)))
    write_volume(base, rel, arr, spacing=(1.0 + 1e-7, 1.0, 1.0), origin=(1e-6, 0.0, 0.0))
    assert verify_dataset(base, workers=1).ok


def test_float_label_with_integer_values_passes(base):
    """The MSD ships some float32 label maps; whole-number values are fine."""
    rel = _label("case_001")
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(base / rel))).astype(np.float32)
    write_volume(base, rel, arr)
    assert verify_dataset(base, workers=1).ok


def test_mixed_orientation_is_a_warning_only(base):
    flip = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    for rel in [_image("case_002", m) for m in range(N_MODALITIES)] + [_label("case_002")]:
        write_volume(base, rel, sitk.GetArrayFromImage(sitk.ReadImage(str(base / rel))), direction=flip)
    report = verify_dataset(base, workers=1)
    assert report.ok, format_report(report)
    assert len(report.warnings) == 1 and "orientations" in report.warnings[0].problem
    assert "WARNING" in format_report(report)


def test_num_training_mismatch_is_a_warning(base):
    data = json.loads((base / "dataset.json").read_text())
    data["numTraining"] = 99
    (base / "dataset.json").write_text(json.dumps(data))
    report = verify_dataset(base)
    assert report.ok
    assert any("numTraining is 99" in w.problem for w in report.warnings)


def test_hidden_files_are_ignored(base):
    (base / "imagesTr" / "._case_000_0000.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    assert verify_dataset(base).ok


def test_missing_folder_is_a_problem(tmp_path):
    report = verify_dataset(tmp_path / "nope")
    assert not report.ok and "not found" in report.problems[0].problem


def test_without_dataset_json_files_are_still_checked(base):
    (base / "dataset.json").unlink()
    (base / _label("case_001")).unlink()
    report = verify_dataset(base)
    assert any(_matches(p, None, "dataset.json", "not found") for p in report.problems)
    assert any(_matches(p, "case_001", _label("case_001"), "missing") for p in report.problems)
    assert report.num_modalities == N_MODALITIES


def test_report_round_trip(base, tmp_path):
    next(d for d in DEFECTS if d.name == "image_nan").apply(base)
    report = verify_dataset(base, source="s3://bucket/datasets/Task501")
    path = report.save(tmp_path / "report.json")
    again = VerificationReport.load(path)
    assert again == report
    assert again.dataset == "s3://bucket/datasets/Task501"
    assert format_report(again).splitlines()[0] == "verify s3://bucket/datasets/Task501"


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii"])
def test_other_formats(tmp_path, suffix):
    root = write_nnunet_task(tmp_path / "Task503_Fmt", make_cases(2, "c", shape=(6, 7, 8)), suffix=suffix)
    data = json.loads((root / "dataset.json").read_text())
    for entry in data["training"]:
        entry["image"] = entry["image"].replace(".nii.gz", suffix)
        entry["label"] = entry["label"].replace(".nii.gz", suffix)
    (root / "dataset.json").write_text(json.dumps(data))
    assert verify_dataset(root).ok
    rel = f"imagesTr/c_001_0000{suffix}"
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(root / rel)))
    arr[1, 1, 1] = np.nan
    write_volume(root, rel, arr)
    (root / f"labelsTr/c_000{suffix}").unlink()
    report = verify_dataset(root)
    lines = [p.line() for p in report.problems]
    assert lines == [f"c_000: labelsTr/c_000{suffix}: label file missing",
                     f"c_001: {rel}: contains non-finite values (1 NaN, 0 Inf voxels)"]
