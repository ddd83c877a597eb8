import json

import numpy as np
from nnkube.nnunet_compat import postprocess as compat_postprocess

from stages.__main__ import main as stages_main
from stages.imageio import read_image
from stages.postprocess.models import PostprocessingRules, load_rules
from tests.postprocess.synthetic import two_class_case, write_seg, write_speckled_model


def test_determine_trainer_dir(tmp_path):
    folder = write_speckled_model(tmp_path / "results", "Task002_Y", speckle_label=2)
    rc = stages_main(["postprocess", "determine", "--trainer-dir", str(folder), "--folds", "0,1",
                      "--num-processes", "1", "--result-json", str(tmp_path / "r.json")])
    assert rc == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["for_which_classes"] == [[1, 2]] and result["num_samples"] == 4
    assert result["postprocessing_json"] == str(folder / "postprocessing.json")
    assert load_rules(folder / "postprocessing.json").for_which_classes == [[1, 2]]


def test_determine_raw_folder_and_apply(tmp_path):
    gt = two_class_case()
    pred = gt.copy()
    pred[7, 9, 11] = 1
    write_seg(tmp_path / "gt" / "a.nii.gz", gt)
    write_seg(tmp_path / "raw" / "a.nii.gz", pred)
    rc = stages_main(["postprocess", "determine", "--raw", str(tmp_path / "raw"), "--reference",
                      str(tmp_path / "gt"), "--labels", "0,1,2", "--num-processes", "1"])
    assert rc == 0
    assert load_rules(tmp_path / "postprocessing.json").validation_final == "raw_postprocessed"
    out, _ = read_image(tmp_path / "raw_postprocessed" / "a.nii.gz")
    np.testing.assert_array_equal(out, gt)
    PostprocessingRules(for_which_classes=[1]).save(tmp_path / "only1.json")
    rc = stages_main(["postprocess", "apply", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "ap"),
                      "--rules", str(tmp_path / "only1.json"), "--num-processes", "1"])
    assert rc == 0
    out, _ = read_image(tmp_path / "ap" / "a.nii.gz")
    np.testing.assert_array_equal(out, gt)


def test_determine_usage_errors_exit_2(tmp_path):
    assert stages_main(["postprocess", "determine"]) == 2
    assert stages_main(["postprocess", "determine", "--raw", str(tmp_path)]) == 2
    assert stages_main(["postprocess", "determine", "--trainer-dir", str(tmp_path), "--folds", "x"]) == 2


def test_nnunet_determine_postprocessing(tmp_path, monkeypatch, capsys):
    folder = write_speckled_model(tmp_path / "results", "Task002_Y", speckle_label=2)
    monkeypatch.setenv("RESULTS_FOLDER", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    assert compat_postprocess.main(["-t", "2", "-m", "3d_fullres", "-f", "0", "1"]) == 0
    assert (folder / "cv_niftis_postprocessed" / "summary.json").is_file()
    assert "for_which_classes=[[1, 2]]" in capsys.readouterr().out
    # all five folds requested, only two exist
    assert compat_postprocess.main(["-t", "Task002_Y", "-m", "3d_fullres"]) == 2
    assert "fold 2 has no validation predictions" in capsys.readouterr().err
