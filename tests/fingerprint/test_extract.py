"""Fingerprint extraction over a raw task folder (spec §2.2)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from stages.errors import DatasetError
from stages.fingerprint.extract import compute_stats, extract_fingerprint, find_case_files
from stages.workers import CRASH_CASE_ENV, WorkerDiedError
from tests.factories import make_case, make_cases, write_msd_task, write_nnunet_task


def _task(tmp_path, n=4, **kw):
    cases = make_cases(n, shape=(16, 18, 20), spacing=(2.0, 0.8, 0.8), zero_border=2, **kw)
    names = ["CT", "T2"][: kw.get("n_modalities", 1)]
    return write_nnunet_task(tmp_path / "Task500_Syn", cases, modality_names=names), cases


def test_fingerprint_of_synthetic_task(tmp_path):
    root, cases = _task(tmp_path, n=4, n_modalities=2)
    fp = extract_fingerprint(root, num_processes=1)
    assert fp.case_ids == sorted(c.case_id for c in cases)
    assert fp.modalities == {0: "CT", 1: "T2"}
    assert fp.all_classes == [1, 2]
    assert fp.dataset_name == "Synthetic"
    for c in fp.cases:
        assert c.shape_before_crop == [16, 18, 20]
        assert c.shape_after_crop == [12, 14, 16]  # 2-voxel zero border removed
        assert c.spacing == pytest.approx([2.0, 0.8, 0.8])
        assert c.size_reduction == pytest.approx(12 * 14 * 16 / (16 * 18 * 20))
        assert set(c.classes) <= {-1, 0, 1, 2}
    # pooled statistics: every 10th foreground voxel of each case (C order), concatenated in case order
    for m in (0, 1):
        voxels = np.concatenate([c.images[m][c.label > 0][::10] for c in sorted(cases, key=lambda c: c.case_id)])
        stats = fp.intensity_properties[m]
        assert stats.mean == pytest.approx(float(np.mean(voxels)), rel=1e-5)
        assert stats.sd == pytest.approx(float(np.std(voxels)), rel=1e-5)
        assert stats.median == pytest.approx(float(np.median(voxels)))
        assert stats.mn == pytest.approx(float(voxels.min())) and stats.mx == pytest.approx(float(voxels.max()))
        assert stats.percentile_99_5 == pytest.approx(float(np.percentile(voxels, 99.5)), rel=1e-5)
        assert stats.percentile_00_5 == pytest.approx(float(np.percentile(voxels, 0.5)), rel=1e-5)
        first = sorted(cases, key=lambda c: c.case_id)[0]
        per_case = fp.cases[0].intensity[m]
        assert per_case.mean == pytest.approx(float(np.mean(first.images[m][first.label > 0][::10])), rel=1e-5)


def test_parallel_equals_sequential(tmp_path):
    root, _ = _task(tmp_path, n=5)
    assert extract_fingerprint(root, num_processes=2) == extract_fingerprint(root, num_processes=1)


def test_msd_single_modality_layout_is_accepted(tmp_path):
    cases = make_cases(3, shape=(10, 12, 14))
    root = write_msd_task(tmp_path / "Task09_Msd", cases)
    files = find_case_files(root)
    assert [os.path.basename(f.image_files[0]) for f in files] == [f"{c.case_id}.nii.gz" for c in cases]
    fp = extract_fingerprint(root)
    assert [c.shape_after_crop for c in fp.cases] == [[10, 12, 14]] * 3


def test_msd_multimodal_layout_asks_for_conversion(tmp_path):
    root = write_msd_task(tmp_path / "Task09_Msd", make_cases(2, shape=(8, 8, 8), n_modalities=2))
    with pytest.raises(DatasetError, match="convert"):
        find_case_files(root)


def test_missing_files_are_all_named(tmp_path):
    root, cases = _task(tmp_path, n=3)
    (root / "labelsTr" / f"{cases[0].case_id}.nii.gz").unlink()
    (root / "imagesTr" / f"{cases[2].case_id}_0000.nii.gz").unlink()
    with pytest.raises(DatasetError) as err:
        extract_fingerprint(root)
    msg = str(err.value)
    assert f"case {cases[0].case_id}: missing label file" in msg
    assert f"{cases[2].case_id}_0000.nii.gz" in msg and "2 problem(s)" in msg


def test_unreadable_image_names_case_and_file(tmp_path):
    root, cases = _task(tmp_path, n=3)
    bad = root / "imagesTr" / f"{cases[1].case_id}_0000.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(DatasetError) as err:
        extract_fingerprint(root, num_processes=2)
    assert cases[1].case_id in str(err.value) and str(bad) in str(err.value)


def test_empty_training_list_is_an_error(tmp_path):
    root, _ = _task(tmp_path, n=1)
    dj = json.loads((root / "dataset.json").read_text())
    dj["training"] = []
    (root / "dataset.json").write_text(json.dumps(dj))
    with pytest.raises(DatasetError, match="no training cases"):
        extract_fingerprint(root)


@pytest.mark.timeout(120)
def test_dead_worker_is_an_error_not_a_hang(tmp_path, monkeypatch):
    root, _ = _task(tmp_path, n=4)
    monkeypatch.setenv(CRASH_CASE_ENV, "case_001")  # its worker exits abruptly, as if OOM-killed
    with pytest.raises(WorkerDiedError) as err:
        extract_fingerprint(root, num_processes=2)
    assert "case_001" in str(err.value) and "unfinished" in str(err.value)


def test_compute_stats_empty_and_values():
    empty = compute_stats(np.zeros(0, np.float32))
    assert np.isnan(empty.mean) and np.isnan(empty.percentile_99_5)
    s = compute_stats(np.arange(201, dtype=np.float32))
    assert (s.mn, s.mx, s.median, s.mean) == (0, 200, 100, 100)
    assert s.percentile_99_5 == pytest.approx(199.0) and s.percentile_00_5 == pytest.approx(1.0)
    assert s.sd == pytest.approx(np.sqrt(np.mean((np.arange(201) - 100.0) ** 2)))


def test_case_without_foreground_gets_nan_stats(tmp_path):
    cases = [make_case("a", shape=(8, 8, 8), seed=0), make_case("b", shape=(8, 8, 8), seed=1)]
    cases[1].label[:] = 0
    root = write_nnunet_task(tmp_path / "Task501_X", cases)
    fp = extract_fingerprint(root)
    assert np.isnan(fp.cases[1].intensity[0].mean)
    assert not np.isnan(fp.intensity_properties[0].mean)
