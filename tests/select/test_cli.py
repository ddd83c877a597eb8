import json

from nnkube.nnunet_compat import find_best as compat_find_best

from stages.__main__ import main as stages_main
from tests.select.conftest import TASK
from tests.select.test_find_best import PAIR


def test_stage_cli(results, tmp_path, capsys):
    rc = stages_main(["select", "--results", str(results), "--task", TASK, "--configurations",
                      "2d,3d_lowres,3d_fullres", "--folds", "0,1", "--num-processes", "1", "--result-json",
                      str(tmp_path / "r.json")])
    assert rc == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["best"] == PAIR and result["is_ensemble"] and result["configurations"] == ["2d", "3d_fullres"]
    assert result["selection"] == str(results / "nnUNet" / "ensembles" / TASK / "selection.json")
    out = capsys.readouterr().out
    assert f"{TASK} submit model {PAIR}" in out and "nnUNet_ensemble -f" in out and "skipped" in out


def test_nnunet_find_best_configuration(results, monkeypatch, capsys):
    monkeypatch.setenv("RESULTS_FOLDER", str(results))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    assert compat_find_best.main(["-m", "2d", "3d_fullres", "-t", "1", "-f", "0", "1", "--disable_ensembling"]) == 0
    out = capsys.readouterr().out
    assert f"{TASK} submit model 2d" in out
    assert compat_find_best.main(["-m", "2d", "3d_lowres", "-t", "1", "-f", "0", "1", "--strict"]) == 2
    assert "3d_lowres: no trained model" in capsys.readouterr().err
    assert compat_find_best.main(["-m", "2d", "-t", "7", "-f", "0", "1"]) == 2
