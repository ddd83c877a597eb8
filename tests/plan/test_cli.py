"""``python -m stages fingerprint`` and ``python -m stages plan`` end to end on a small synthetic task."""

from __future__ import annotations

import json

import pytest

from stages.__main__ import main
from stages.errors import EXIT_BAD_INPUT
from stages.fingerprint.models import Fingerprint
from stages.plan.models import Plans, plans_filename
from tests.factories import make_cases, write_nnunet_task


def test_fingerprint_then_plan(tmp_path):
    root = write_nnunet_task(tmp_path / "Task502_Cli", make_cases(3, shape=(12, 16, 16)))
    fp_uri = str(tmp_path / "out" / "fingerprint.json")
    rc = main(["fingerprint", "--dataset", str(root), "--output", fp_uri, "--num-processes", "1",
               "--result-json", str(tmp_path / "fp_result.json")])
    assert rc == 0
    fp = Fingerprint.load(fp_uri)
    assert len(fp.cases) == 3
    result = json.loads((tmp_path / "fp_result.json").read_text())
    assert result["extra"]["fingerprint"] == fp_uri and result["extra"]["num_cases"] == 3

    out = tmp_path / "plans"
    rc = main(["plan", "--fingerprint", fp_uri, "--output", str(out), "--result-json", str(tmp_path / "p.json")])
    assert rc == 0
    p3 = Plans.load(out / plans_filename("3D"))
    p2 = Plans.load(out / plans_filename("2D"))
    assert (p3.dimension, p2.dimension) == ("3D", "2D")
    assert p3.configuration("3d_fullres").median_patient_size_in_voxels == [12, 16, 16]
    summary = json.loads((tmp_path / "p.json").read_text())["extra"]
    assert summary["configurations"] == ["2d", "3d_fullres"] and summary["has_cascade"] is False
    assert summary["plans_3d"].endswith("nnUNetPlansv2.1_plans_3D.json")

    only3d = tmp_path / "plans3d"
    assert main(["plan", "--fingerprint", fp_uri, "--output", str(only3d), "--no-2d",
                 "--planner3d", "ExperimentPlanner3D_v21_16GB"]) == 0
    assert sorted(p.name for p in only3d.iterdir()) == [
        "_NNKUBE_COMPLETE.plan.ExperimentPlanner3D_v21_16GB.no2d.json", "nnUNetPlansv2.1_16GB_plans_3D.json"]
    assert main(["plan", "--fingerprint", fp_uri, "--output", str(only3d), "--planner3d", "NoSuchPlanner"]) \
        == EXIT_BAD_INPUT


def test_bad_inputs_exit_2(tmp_path, capsys):
    assert main(["fingerprint", "--dataset", str(tmp_path / "missing"), "--output", str(tmp_path / "f.json")]) \
        == EXIT_BAD_INPUT
    assert main(["plan", "--fingerprint", str(tmp_path / "missing.json"), "--output", str(tmp_path)]) \
        == EXIT_BAD_INPUT
    fp_path = tmp_path / "fp.json"
    fp_path.write_text('{"schema_version": 99}')
    assert main(["plan", "--fingerprint", str(fp_path), "--output", str(tmp_path)]) == EXIT_BAD_INPUT
    assert main(["plan", "--fingerprint", str(fp_path), "--output", str(tmp_path), "--no-2d", "--no-3d"]) \
        == EXIT_BAD_INPUT


@pytest.mark.s3
def test_fingerprint_and_plan_on_s3(tmp_path, s3_bucket):
    from stages import storage

    root = write_nnunet_task(tmp_path / "Task503_S3", make_cases(2, shape=(10, 12, 12)))
    dataset_uri = f"{s3_bucket}/raw/Task503_S3"
    storage.upload_tree(root, dataset_uri)
    fp_uri = f"{s3_bucket}/work/fingerprint.json"
    assert main(["fingerprint", "--dataset", dataset_uri, "--output", fp_uri, "--num-processes", "1"]) == 0
    assert len(Fingerprint.from_json(storage.read_bytes(fp_uri)).cases) == 2
    assert main(["plan", "--fingerprint", fp_uri, "--output", f"{s3_bucket}/work/plans"]) == 0
    names = sorted(storage.basename(u) for u in storage.list_prefix(f"{s3_bucket}/work/plans"))
    marker = "_NNKUBE_COMPLETE.plan.ExperimentPlanner3D_v21.ExperimentPlanner2D_v21.json"
    assert names == [marker, plans_filename("2D"), plans_filename("3D")]
    plans = Plans.from_json(storage.read_bytes(f"{s3_bucket}/work/plans/{plans_filename('3D')}"))
    assert plans.configuration("3d_fullres").median_patient_size_in_voxels == [10, 12, 12]
