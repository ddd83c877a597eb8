import json

import numpy as np
import pytest
from nnkube.nnunet_compat import evaluate as compat_evaluate

from stages.__main__ import main as stages_main
from tests.postprocess.synthetic import two_class_case, write_seg


@pytest.fixture
def folders(tmp_path):
    gt = two_class_case()
    pred = gt.copy()
    pred[2:6, 2:8, 6] = 1  # one slab of class 2 predicted as class 1
    write_seg(tmp_path / "gt" / "a.nii.gz", gt)
    write_seg(tmp_path / "pred" / "a.nii.gz", pred)
    write_seg(tmp_path / "gt" / "b.nii.gz", gt)
    write_seg(tmp_path / "pred" / "b.nii.gz", gt)
    return tmp_path / "gt", tmp_path / "pred"


def _dice(tp, fp, fn):
    return 2 * tp / (2 * tp + fp + fn)


def test_stage_cli_writes_summary_and_result(folders, tmp_path):
    gt, pred = folders
    rc = stages_main(["evaluate", "--reference", str(gt), "--predictions", str(pred), "--labels", "0,1,2",
                      "--output", str(tmp_path / "s.json"), "--result-json", str(tmp_path / "r.json"),
                      "--num-processes", "1"])
    assert rc == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert sorted(summary["results"]["mean"]) == ["0", "1", "2", "mean"]
    d1, d2 = _dice(96, 24, 0), _dice(48, 0, 24)  # case a; case b is perfect
    assert summary["results"]["mean"]["1"]["Dice"] == pytest.approx((d1 + 1) / 2)
    assert summary["results"]["mean"]["2"]["Dice"] == pytest.approx((d2 + 1) / 2)
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["num_cases"] == 2
    assert result["foreground_mean_dice"] == pytest.approx(((d1 + 1) / 2 + (d2 + 1) / 2) / 2)
    assert not (pred / "summary.json").exists()


def test_stage_cli_bad_labels_and_missing_reference_exit_2(folders, tmp_path):
    gt, pred = folders
    assert stages_main(["evaluate", "--reference", str(gt), "--predictions", str(pred), "--labels", "a,b"]) == 2
    (gt / "b.nii.gz").unlink()
    assert stages_main(["evaluate", "--reference", str(gt), "--predictions", str(pred), "--labels", "1,2",
                        "--num-processes", "1"]) == 2


def test_nnunet_evaluate_folder(folders, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    gt, pred = folders
    assert compat_evaluate.main(["-ref", str(gt), "-pred", str(pred), "-l", "1", "2"]) == 0
    summary = json.loads((pred / "summary.json").read_text())
    assert sorted(summary["results"]["mean"]) == ["1", "2", "mean"]  # background only when asked for
    assert "foreground mean Dice" in capsys.readouterr().out
    write_seg(pred / "c.nii.gz", np.zeros((8, 10, 12), np.uint8))  # no reference for c
    assert compat_evaluate.main(["-ref", str(gt), "-pred", str(pred), "-l", "0", "1", "2"]) == 2
