import json
import os

import pytest

from stages.errors import BadInputError
from stages.select.find_best import find_best_configuration
from stages.select.models import Selection
from stages.select.report import format_report
from tests.select.conftest import ERRORS_2D, TASK, make_models

PAIR = "ensemble_2d__nnUNetTrainerV2__nnUNetPlansv2.1--3d_fullres__nnUNetTrainerV2__nnUNetPlansv2.1"


def _select(results, **kwargs):
    kwargs.setdefault("configurations", ("2d", "3d_fullres"))
    return find_best_configuration(results, TASK, folds=(0, 1), **kwargs)


def test_picks_higher_cv_dice_configuration_without_ensembling(results):
    sel = _select(results, allow_ensembling=False)
    assert sel.best == "2d" and list(sel.scores) == ["2d", "3d_fullres"]
    assert sel.scores["2d"] > sel.scores["3d_fullres"]
    assert sel.score == sel.scores["2d"] < 1.0
    assert [m.configuration for m in sel.models] == ["2d"] and not sel.is_ensemble
    assert sel.postprocessing_json == f"nnUNet/2d/{TASK}/nnUNetTrainerV2__nnUNetPlansv2.1/postprocessing.json"
    assert os.path.isfile(sel.resolve(sel.postprocessing_json))
    assert (results / "nnUNet" / "2d" / TASK / "nnUNetTrainerV2__nnUNetPlansv2.1" / "cv_niftis_raw"
            / "summary.json").is_file()
    assert sel.commands == [f"nnUNet_predict -i FOLDER_WITH_TEST_CASES -o OUTPUT_FOLDER -tr nnUNetTrainerV2 "
                            f"-ctr nnUNetTrainerV2CascadeFullRes -m 2d -p nnUNetPlansv2.1 -t {TASK}"]


def test_pair_wins_when_averaging_fixes_both_models_errors(results):
    sel = _select(results)
    assert list(sel.scores) == ["2d", "3d_fullres", PAIR]
    assert sel.best == PAIR and sel.score == pytest.approx(1.0)
    assert max(sel.scores["2d"], sel.scores["3d_fullres"]) < 1.0
    assert [m.configuration for m in sel.models] == ["2d", "3d_fullres"]
    out = results / "nnUNet" / "ensembles" / TASK
    assert sel.postprocessing_json == f"nnUNet/ensembles/{TASK}/{PAIR}/postprocessing.json"
    assert len(list((out / PAIR / "ensembled_raw").glob("*.nii.gz"))) == 4
    assert (out / PAIR / "ensembled_postprocessed" / "summary.json").is_file()
    # the decision document for workflows
    doc = Selection.load(out / "selection.json")
    assert doc == sel and doc.results_folder == str(results) and doc.folds == [0, 1]
    assert doc.configurations == ["2d", "3d_fullres"] and doc.skipped_configurations == []
    # commands, csv, report
    commands = (out / "prediction_commands.txt").read_text().splitlines()
    assert commands[0].endswith("-m 2d -p nnUNetPlansv2.1 -t Task001_X -z") and "-o OUTPUT_FOLDER_MODEL1" in commands[0]
    assert "-m 3d_fullres" in commands[1] and commands[1].endswith(" -z")
    assert commands[2] == (f"nnUNet_ensemble -f OUTPUT_FOLDER_MODEL1 OUTPUT_FOLDER_MODEL2 -o OUTPUT_FOLDER -pp "
                           f"{out / PAIR / 'postprocessing.json'}")
    csv = (out / "summary.csv").read_text().splitlines()
    assert csv[0] == "model,1,2,average"
    assert csv[3] == f"{PAIR},1.0000,1.0000,1.0000"
    row_2d = csv[1].split(",")
    assert row_2d[0] == "2d" and float(row_2d[1]) < 1.0 and row_2d[2] == "1.0000"
    text = format_report(sel)
    assert f"{TASK} submit model {PAIR} 1.0000" in text and f"2d {sel.scores['2d']:.4f}" in text


def test_ties_last_candidate_wins(tmp_path):
    results = tmp_path / "results"
    make_models(results, configs=(("2d", ERRORS_2D), ("3d_fullres", ERRORS_2D)))
    assert _select(results, allow_ensembling=False).best == "3d_fullres"
    sel = _select(results)
    assert sel.best == PAIR and sel.scores[PAIR] == sel.scores["2d"]
    assert "tied with the winner" in format_report(sel)


def test_missing_configuration_skipped_or_strict_error(results):
    sel = _select(results, configurations=("2d", "3d_lowres", "3d_fullres"), allow_ensembling=False)
    assert sel.skipped_configurations == ["3d_lowres"] and sel.configurations == ["2d", "3d_fullres"]
    with pytest.raises(BadInputError, match="3d_lowres: no trained model"):
        _select(results, configurations=("2d", "3d_lowres"), strict=True)
    with pytest.raises(BadInputError, match="none of the configurations"):
        _select(results, configurations=("3d_lowres",))


def test_missing_validation_npz_asks_for_val_npz(results):
    (results / "nnUNet" / "3d_fullres" / TASK / "nnUNetTrainerV2__nnUNetPlansv2.1" / "fold_1" / "validation_raw"
     / "case_1.npz").unlink()
    with pytest.raises(BadInputError, match=r"3d_fullres fold 1: .*case_1.npz is missing.*"
                       r"nnUNet_train 3d_fullres nnUNetTrainerV2 Task001_X 1 -val --npz"):
        _select(results)


def test_results_reused_when_up_to_date_and_recomputed_when_inputs_change(results):
    _select(results)
    model = results / "nnUNet" / "2d" / TASK / "nnUNetTrainerV2__nnUNetPlansv2.1"
    cv_summary = model / "cv_niftis_raw" / "summary.json"
    ens_summary = results / "nnUNet" / "ensembles" / TASK / PAIR / "ensembled_raw" / "summary.json"
    stamps = (json.loads(cv_summary.read_text())["id"], cv_summary.stat().st_mtime_ns, ens_summary.stat().st_mtime_ns)
    _select(results)
    assert (json.loads(cv_summary.read_text())["id"], cv_summary.stat().st_mtime_ns,
            ens_summary.stat().st_mtime_ns) == stamps
    later = cv_summary.stat().st_mtime + 10
    os.utime(model / "fold_0" / "validation_raw" / "case_0.npz", (later, later))
    os.utime(model / "fold_0" / "validation_raw" / "case_0.nii.gz", (later, later))
    _select(results)
    assert cv_summary.stat().st_mtime_ns != stamps[1] and ens_summary.stat().st_mtime_ns != stamps[2]
