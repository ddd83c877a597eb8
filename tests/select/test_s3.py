import json

import pytest

from stages import storage
from stages.__main__ import main as stages_main
from stages.select.models import Selection
from tests.select.conftest import TASK
from tests.select.test_find_best import PAIR

pytestmark = pytest.mark.s3


def test_select_on_s3_results(results, s3_bucket, tmp_path, capsys):
    remote = f"{s3_bucket}/results"
    storage.upload_tree(results, remote)
    rc = stages_main(["select", "--results", remote, "--task", TASK, "--configurations", "2d,3d_fullres,3d_lowres",
                      "--folds", "0,1", "--num-processes", "1", "--result-json", f"{remote}/select.json"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(storage.read_text(f"{remote}/select.json"))
    assert result["best"] == PAIR
    assert result["postprocessing_json"] == f"{remote}/nnUNet/ensembles/{TASK}/{PAIR}/postprocessing.json"
    assert storage.exists(result["postprocessing_json"])
    selection = Selection.from_json(storage.read_text(result["selection"]))
    assert selection.results_folder == remote and selection.skipped_configurations == ["3d_lowres"]
    model = f"{remote}/nnUNet/2d/{TASK}/nnUNetTrainerV2__nnUNetPlansv2.1"
    assert storage.exists(f"{model}/postprocessing.json")
    assert storage.exists(f"{model}/cv_niftis_raw/summary.json")
    assert storage.exists(f"{model}/cv_niftis_postprocessed/case_0.nii.gz")


def test_evaluate_and_ensemble_on_s3(results, s3_bucket, tmp_path):
    model = results / "nnUNet" / "2d" / TASK / "nnUNetTrainerV2__nnUNetPlansv2.1"
    storage.upload_tree(model, f"{s3_bucket}/m")
    rc = stages_main(["evaluate", "--reference", f"{s3_bucket}/m/gt_niftis", "--predictions",
                      f"{s3_bucket}/m/fold_0/validation_raw", "--labels", "0,1,2", "--num-processes", "1"])
    assert rc == 0
    summary = json.loads(storage.read_text(f"{s3_bucket}/m/fold_0/validation_raw/summary.json"))
    assert len(summary["results"]["all"]) == 2
    rc = stages_main(["ensemble", "--folder", f"{s3_bucket}/m/fold_0/validation_raw", "--folder",
                      str(model / "fold_0" / "validation_raw"), "--output", f"{s3_bucket}/ens", "--num-processes", "1"])
    assert rc == 0
    assert sorted(storage.basename(u) for u in storage.list_prefix(f"{s3_bucket}/ens")) == ["case_0.nii.gz",
                                                                                          "case_2.nii.gz"]
    rc = stages_main(["postprocess", "determine", "--trainer-dir", f"{s3_bucket}/m", "--folds", "0,1",
                      "--num-processes", "1"])
    assert rc == 0
    assert storage.exists(f"{s3_bucket}/m/postprocessing.json")
    assert storage.exists(f"{s3_bucket}/m/cv_niftis_raw/summary.json")
