import json

import numpy as np
import pytest

from stages.errors import BadInputError
from stages.imageio import read_image
from stages.postprocess.consolidate import consolidate_folds
from stages.postprocess.determine import determine_postprocessing
from stages.postprocess.models import load_rules
from tests.postprocess.synthetic import two_class_case, write_seg, write_speckled_model


def _write(tmp_path, cases):
    """cases: {name: (gt, pred)} -> (raw folder, gt folder)."""
    for name, (gt, pred) in cases.items():
        write_seg(tmp_path / "gt" / f"{name}.nii.gz", gt)
        write_seg(tmp_path / "raw" / f"{name}.nii.gz", pred)
    return tmp_path / "raw", tmp_path / "gt"


def test_whole_foreground_step_kept_when_one_class_improves_and_none_worse(tmp_path):
    gt = two_class_case()
    pred = gt.copy()
    pred[7, 9, 11] = 1  # spurious class 1 island
    raw, ref = _write(tmp_path, {"a": (gt, pred), "b": (gt, gt.copy())})
    rules = determine_postprocessing(raw, ref, [0, 1, 2], tmp_path / "pp")
    assert rules.for_which_classes == [[1, 2]]
    assert rules.dc_per_class_pp_all["1"] > rules.dc_per_class_raw["1"]
    assert rules.dc_per_class_pp_all["2"] == rules.dc_per_class_raw["2"]
    assert rules.num_samples == 2 and rules.validation_raw == "raw" and rules.validation_final == "pp"
    assert load_rules(tmp_path / "postprocessing.json") == rules
    out, _ = read_image(tmp_path / "pp" / "a.nii.gz")
    np.testing.assert_array_equal(out, gt)
    summary = json.loads((tmp_path / "pp" / "summary.json").read_text())
    assert summary["results"]["mean"]["1"]["Dice"] == pytest.approx(1.0)
    assert not any(p.name.startswith(".pp-") for p in tmp_path.iterdir())  # temporary folders removed


def test_whole_foreground_step_rejected_when_a_class_gets_worse_per_class_step_decides(tmp_path):
    gt = two_class_case()
    gt[7, 0:3, 0:3] = 2  # a real, separate class 2 component
    pred = gt.copy()
    pred[0, 9, 11] = 1  # spurious class 1 island
    raw, ref = _write(tmp_path, {"a": (gt, pred)})
    rules = determine_postprocessing(raw, ref, [1, 2], tmp_path / "pp")
    assert rules.dc_per_class_pp_all["2"] < rules.dc_per_class_raw["2"]  # whole-fg LCC drops the real part
    assert rules.for_which_classes == [1]  # per class: class 1 improves, class 2 would get worse
    assert rules.dc_per_class_pp_per_class["2"] < rules.dc_per_class_raw["2"]
    out, _ = read_image(tmp_path / "pp" / "a.nii.gz")
    np.testing.assert_array_equal(out, gt)


def test_per_class_step_starts_from_whole_foreground_output(tmp_path):
    gt = two_class_case()
    pred = gt.copy()
    pred[7, 9, 11] = 1  # removed by the whole-foreground step
    pred[2, 1, 2] = 2  # class 2 voxel attached to the class 1 block only: survives step A, not step B
    raw, ref = _write(tmp_path, {"a": (gt, pred)})
    rules = determine_postprocessing(raw, ref, [0, 1, 2], tmp_path / "pp")
    assert rules.for_which_classes == [[1, 2], 2]
    out, _ = read_image(tmp_path / "pp" / "a.nii.gz")
    assert out[2, 1, 2] == 0 and out[7, 9, 11] == 0


def test_nothing_helps_gives_empty_rules_and_copies(tmp_path):
    gt = two_class_case()
    raw, ref = _write(tmp_path, {"a": (gt, gt.copy())})
    rules = determine_postprocessing(raw, ref, [0, 1, 2], tmp_path / "pp", json_path=tmp_path / "r.json")
    assert rules.for_which_classes == []
    assert (tmp_path / "pp" / "a.nii.gz").is_file() and (tmp_path / "r.json").is_file()


def test_single_foreground_class_has_no_per_class_step(tmp_path):
    gt = np.zeros((6, 6, 6), np.uint8)
    gt[1:4, 1:4, 1:4] = 1
    pred = gt.copy()
    pred[5, 5, 5] = 1
    raw, ref = _write(tmp_path, {"a": (gt, pred)})
    rules = determine_postprocessing(raw, ref, [0, 1], tmp_path / "pp")
    assert rules.for_which_classes == [[1]] and rules.dc_per_class_pp_per_class == {}


def test_determine_rejects_same_output_folder_and_no_foreground(tmp_path):
    gt = two_class_case()
    raw, ref = _write(tmp_path, {"a": (gt, gt)})
    with pytest.raises(BadInputError, match="must differ"):
        determine_postprocessing(raw, ref, [0, 1, 2], raw)
    with pytest.raises(BadInputError, match="foreground"):
        determine_postprocessing(raw, ref, [0], tmp_path / "pp")


def test_consolidate_folds_writes_cv_folders_and_rules(tmp_path):
    folder = write_speckled_model(tmp_path / "results", "Task001_X", speckle_label=1)
    rules = consolidate_folds(folder, folds=(0, 1), labels=[0, 1, 2])
    assert rules.for_which_classes == [[1, 2]]
    assert sorted(p.name for p in (folder / "cv_niftis_raw").glob("*.nii.gz")) == [f"case_{i}.nii.gz"
                                                                                  for i in range(4)]
    assert (folder / "cv_niftis_raw" / "summary.json").is_file()
    assert (folder / "cv_niftis_postprocessed" / "summary.json").is_file()
    assert load_rules(folder / "postprocessing.json").num_samples == 4


def test_consolidate_infers_labels_from_references(tmp_path):
    folder = write_speckled_model(tmp_path / "results", "Task001_X", speckle_label=1)
    rules = consolidate_folds(folder, folds=(0, 1))
    assert sorted(rules.dc_per_class_raw) == ["1", "2"]


def test_consolidate_count_mismatch_names_missing_case(tmp_path):
    folder = write_speckled_model(tmp_path / "results", "Task001_X", speckle_label=1)
    (folder / "fold_1" / "validation_raw" / "case_3.nii.gz").unlink()
    with pytest.raises(BadInputError, match=r"3 validation predictions but .* 4 references.*case_3"):
        consolidate_folds(folder, folds=(0, 1))


def test_consolidate_missing_fold_and_duplicate_case(tmp_path):
    folder = write_speckled_model(tmp_path / "results", "Task001_X", speckle_label=1)
    with pytest.raises(BadInputError, match="fold 2 has no validation predictions"):
        consolidate_folds(folder, folds=(0, 1, 2))
    src = folder / "fold_0" / "validation_raw" / "case_0.nii.gz"
    (folder / "fold_1" / "validation_raw" / "case_0.nii.gz").write_bytes(src.read_bytes())
    with pytest.raises(BadInputError, match="case_0 is predicted in two folds"):
        consolidate_folds(folder, folds=(0, 1))
