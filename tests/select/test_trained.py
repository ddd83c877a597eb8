"""Model selection on really trained models: 5-fold ``nnUNet_train --npz`` of 2d and 3d_fullres, then
``nnUNet_find_best_configuration`` (spec §10, §11).

The expected winner is recomputed here from the label files themselves (cross-validation predictions against the
raw task's references, and the pair ensemble rebuilt from the saved validation probabilities), not read back from
the summaries the selection wrote. The printed prediction commands are then run on two cases.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_task import TRAINER_DIR, build_tiny_task, run_compat_train, set_env

TASK = "Task098_TinySelect"
TASK_ID = "98"
CONFIGS = ("2d", "3d_fullres")
PAIR = f"ensemble_2d__{TRAINER_DIR}--3d_fullres__{TRAINER_DIR}"
FG = (1, 2)
# different budgets, so that the two configurations reach different Dice
BUDGETS = {"2d": ["--epochs", "1", "--iterations", "2"], "3d_fullres": ["--epochs", "2", "--iterations", "3"]}

pytestmark = pytest.mark.slow


def _labels(path: Path) -> np.ndarray:
    from stages.imageio import read_image

    return read_image(path)[0]


def _dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    p, r = pred == label, ref == label
    denom = int(p.sum()) + int(r.sum())
    return math.nan if denom == 0 else 2.0 * int((p & r).sum()) / denom


def _per_class_dice(predictions: dict[str, np.ndarray], raw_dir: Path) -> dict[int, float]:
    """Case-averaged Dice per foreground label of ``case -> labels`` against the raw task's labelsTr."""
    per_case = {c: [_dice(seg, _labels(raw_dir / "labelsTr" / f"{c}.nii.gz"), k) for k in FG]
                for c, seg in predictions.items()}
    table = np.array(list(per_case.values()))
    return {k: float(np.nanmean(table[:, i])) for i, k in enumerate(FG)}


def _read_folder(folder: Path) -> dict[str, np.ndarray]:
    return {p.name[: -len(".nii.gz")]: _labels(p) for p in sorted(folder.glob("*.nii.gz"))}


def _check_rules(path: Path, per_class_raw: dict[int, float]) -> None:
    """``postprocessing.json`` exists, is based on all ten cases and its decision follows the recorded Dice."""
    from stages.postprocess.models import load_rules

    rules = load_rules(path)
    assert rules.num_samples == 10
    for k in FG:
        assert rules.dc_per_class_raw[str(k)] == pytest.approx(per_class_raw[k], abs=1e-9), (path, k)
    raw, pp_all, pp_each = rules.dc_per_class_raw, rules.dc_per_class_pp_all, rules.dc_per_class_pp_per_class
    keys = [str(k) for k in FG]
    whole = (any(pp_all[k] > raw[k] for k in keys) and not any(pp_all[k] < raw[k] for k in keys))
    base = pp_all if whole else raw
    expected = ([list(FG)] if whole else []) + [k for k in FG if pp_each[str(k)] > base[str(k)]]
    assert rules.for_which_classes == expected, path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """The tiny task with 2d and 3d_fullres trained on 5 folds each (validation with ``--npz``)."""
    base = tmp_path_factory.mktemp("select_trained")
    task = build_tiny_task(base, TASK)
    results = base / "results"
    with pytest.MonkeyPatch.context() as mp:
        set_env(mp, task, results)
        for config in CONFIGS:
            for fold in range(5):
                rc = run_compat_train([config, "nnUNetTrainerV2", TASK_ID, str(fold), *BUDGETS[config],
                                       "--val_iterations", "1", "--num_workers", "0", "--npz"])
                assert rc == 0, (config, fold)
    return task, results


def test_find_best_configuration_on_trained_models(trained, tmp_path, monkeypatch, capsys):
    from nnkube.nnunet_compat.ensemble import main as ensemble_main
    from nnkube.nnunet_compat.find_best import main as find_best_main
    from nnkube.nnunet_compat.predict import main as predict_main

    from stages.select.models import Selection

    task, results = trained
    set_env(monkeypatch, task, results)
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    capsys.readouterr()
    assert find_best_main(["-m", *CONFIGS, "-t", TASK_ID]) == 0
    printed = capsys.readouterr().out

    # -- independent scores: every configuration's cross-validation predictions against the raw references
    folders = {c: results / "nnUNet" / c / TASK / TRAINER_DIR for c in CONFIGS}
    per_class, cv_preds = {}, {}
    for config, folder in folders.items():
        cv = _read_folder(folder / "cv_niftis_raw")
        assert sorted(cv) == task.case_ids, config
        for case, seg in cv.items():  # the consolidated files are the folds' validation outputs
            (fold_file,) = folder.glob(f"fold_*/validation_raw/{case}.nii.gz")
            np.testing.assert_array_equal(seg, _labels(fold_file))
        per_class[config], cv_preds[config] = _per_class_dice(cv, task.raw_dir), cv

    # -- the pair: mean of both configurations' validation probabilities, argmax
    pair_dir = results / "nnUNet" / "ensembles" / TASK / PAIR
    ensembled = _read_folder(pair_dir / "ensembled_raw")
    assert sorted(ensembled) == task.case_ids
    for case, seg in ensembled.items():
        probs = []
        for folder in folders.values():
            (npz,) = folder.glob(f"fold_*/validation_raw/{case}.npz")
            with np.load(npz) as f:
                probs.append(f["softmax"].astype(np.float32))
        expected = np.argmax((probs[0] + probs[1]) / 2, axis=0)
        assert seg.shape == expected.shape
        assert np.mean(seg == expected) > 0.999, case
    per_class[PAIR] = _per_class_dice(ensembled, task.raw_dir)

    scores = {name: float(np.mean([d[k] for k in FG])) for name, d in per_class.items()}
    assert scores["2d"] != pytest.approx(scores["3d_fullres"], abs=1e-6), "budgets should give different Dice"
    best_value = max(scores.values())
    winner = [n for n, s in scores.items() if s == best_value][-1]  # ties: the last candidate wins

    # -- the decision document
    out = results / "nnUNet" / "ensembles" / TASK
    selection = Selection.load(out / "selection.json")
    assert selection.best == winner, (scores, selection.scores)
    assert selection.score == pytest.approx(scores[winner], abs=1e-9)
    assert list(selection.scores) == ["2d", "3d_fullres", PAIR]
    for name, value in scores.items():
        assert selection.scores[name] == pytest.approx(value, abs=1e-9), name
    for config, folder in folders.items():  # the summaries the scores come from
        summary = json.loads((folder / "cv_niftis_raw" / "summary.json").read_text())
        for k in FG:
            assert summary["results"]["mean"][str(k)]["Dice"] == pytest.approx(per_class[config][k], abs=1e-9)
    summary = json.loads((pair_dir / "ensembled_raw" / "summary.json").read_text())
    assert [summary["results"]["mean"][str(k)]["Dice"] for k in FG] == pytest.approx(
        [per_class[PAIR][k] for k in FG], abs=1e-9)
    members = ["2d", "3d_fullres"] if winner == PAIR else [winner]
    assert [m.configuration for m in selection.models] == members

    # -- postprocessing: trainer level for each configuration, and for the ensemble
    for config, folder in folders.items():
        _check_rules(folder / "postprocessing.json", per_class[config])
        assert sorted(_read_folder(folder / "cv_niftis_postprocessed")) == task.case_ids
    _check_rules(pair_dir / "postprocessing.json", per_class[PAIR])
    assert sorted(_read_folder(pair_dir / "ensembled_postprocessed")) == task.case_ids
    expected_pp = (pair_dir if winner == PAIR else folders[winner]) / "postprocessing.json"
    assert Path(selection.resolve(selection.postprocessing_json)) == expected_pp

    # -- the report: every score, the winner, the commands (also in prediction_commands.txt)
    for name, value in scores.items():
        assert f"{name} {value:.4f}" in printed
    assert f"{TASK} submit model {winner} {scores[winner]:.4f}" in printed
    commands = (out / "prediction_commands.txt").read_text().splitlines()
    assert commands == selection.commands and commands
    for line in commands:
        assert line in printed
    predicts = [c for c in commands if c.startswith("nnUNet_predict ")]
    assert [shlex.split(c)[shlex.split(c).index("-m") + 1] for c in predicts] == members
    if winner == PAIR:
        assert all(c.endswith(" -z") for c in predicts)
        assert commands[-1].startswith("nnUNet_ensemble ") and commands[-1].endswith(f"-pp {expected_pp}")
    else:
        assert len(commands) == 1 and " -z" not in commands[0]

    # -- the printed commands work: run them on two cases
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in task.case_ids[:2]:
        shutil.copy(task.raw_dir / "imagesTr" / f"{case}_0000.nii.gz", inputs)
    placeholders = {"FOLDER_WITH_TEST_CASES": str(inputs)}
    entry = {"nnUNet_predict": predict_main, "nnUNet_ensemble": ensemble_main}
    for line in commands:
        argv = [placeholders.get(a, str(tmp_path / a) if a.startswith("OUTPUT_FOLDER") else a)
                for a in shlex.split(line)]
        extra = ["--num_threads_preprocessing", "0", "--num_threads_nifti_save", "0"]
        assert entry[argv[0]](argv[1:] + (extra if argv[0] == "nnUNet_predict" else [])) == 0, line
    from stages.imageio import read_image

    for case in task.case_ids[:2]:
        seg, geometry = read_image(tmp_path / "OUTPUT_FOLDER" / f"{case}.nii.gz")
        _, raw_geometry = read_image(inputs / f"{case}_0000.nii.gz")
        assert geometry == raw_geometry, geometry.mismatches(raw_geometry)
        assert set(np.unique(seg).tolist()) <= {0, *FG}
