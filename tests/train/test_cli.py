"""``nnUNet_train`` end to end on the tiny synthetic task: the seed's result layout, ``--npz``, ``-val``, 2d."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from stages.train.checkpoint import FINAL, LATEST, TrainingState, sidecar
from tests.train.conftest import (
    TASK,
    TASK_ID,
    TRAINER_DIR,
    check_validation,
    checkpoint_files,
    fold_dir,
    run_compat_train,
    set_env,
    validation_keys,
)

EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+): train loss")


def _epoch_lines(fold: Path) -> list[str]:
    return [m.group(0) for p in sorted(fold.glob("training_log_*.txt")) for m in EPOCH_LINE.finditer(p.read_text())]


def test_train_writes_the_seed_layout(trained_3d, tiny_task):
    fold = trained_3d.fold_dir
    assert fold == trained_3d.results / "nnUNet" / "3d_fullres" / TASK / TRAINER_DIR / "fold_0"
    blob = torch.load(fold / FINAL, map_location="cpu", weights_only=True)
    assert blob["network"] and all(isinstance(v, torch.Tensor) for v in blob["network"].values())
    state = TrainingState.load(sidecar(fold / FINAL))
    assert TrainingState.from_json(blob["state"]) == state  # the sidecar repeats the state inside the file
    assert (state.trainer, state.configuration, state.fold, state.task) == ("nnUNetTrainerV2", "3d_fullres", "0",
                                                                           TASK)
    assert state.finished and state.epoch == state.max_epochs == 2 and state.iterations_per_epoch == 3
    assert len(state.train_losses) == len(state.val_losses) == len(state.val_eval_metrics) == 2
    assert not (fold / LATEST).exists() and not sidecar(fold / LATEST).exists()
    assert (fold / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _epoch_lines(fold) == ["epoch 1/2: train loss", "epoch 2/2: train loss"]
    assert (fold.parent / "plans.json").is_file() and (fold.parent / "dataset.json").is_file()
    assert sorted(p.name for p in (fold.parent / "gt_niftis").iterdir()) == [
        f"{k}.nii.gz" for k in validation_keys(tiny_task)]


def test_final_validation_exports_every_case_in_raw_geometry(trained_3d, tiny_task):
    check_validation(trained_3d.fold_dir, tiny_task, npz=False)


def test_validation_only_reruns_validation_with_npz(trained_3d, tiny_task, tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(trained_3d.results, results)
    fold = fold_dir(results)
    shutil.rmtree(fold / "validation_raw")
    before = checkpoint_files(fold)
    set_env(monkeypatch, tiny_task, results)
    assert run_compat_train(["3d_fullres", "nnUNetTrainerV2", TASK_ID, "0", "-val", "--npz"]) == 0
    assert checkpoint_files(fold) == before  # nothing trained, nothing saved
    assert len(_epoch_lines(fold)) == 2
    check_validation(fold, tiny_task, npz=True)


def test_validation_only_without_final_checkpoint_is_a_bad_input(tiny_task, results_env):
    assert run_compat_train(["3d_fullres", "nnUNetTrainerV2", TASK_ID, "0", "-val"]) == 2


def test_train_2d(tiny_task, results_env):
    argv = ["2d", "nnUNetTrainerV2", TASK, "0", "--epochs", "1", "--iterations", "2", "--val_iterations", "1"]
    assert run_compat_train(argv) == 0
    fold = fold_dir(results_env, "2d")
    state = TrainingState.load(sidecar(fold / FINAL))
    assert state.configuration == "2d" and state.epoch == 1 and state.finished
    blob = torch.load(fold / FINAL, map_location="cpu", weights_only=True)
    assert any(v.ndim == 4 for v in blob["network"].values())  # 2D convolutions
    check_validation(fold, tiny_task)


def test_missing_environment_variable_exits_2(tiny_task, monkeypatch):
    monkeypatch.delenv("RESULTS_FOLDER", raising=False)
    monkeypatch.setenv("nnUNet_preprocessed", str(tiny_task.preprocessed_root))
    assert run_compat_train(["3d_fullres", "nnUNetTrainerV2", TASK_ID, "0"]) == 2


@pytest.mark.parametrize("configuration", ["3d_lowres", "3d_cascade_fullres"])
def test_configuration_without_cascade_exits_2(tiny_task, results_env, configuration):
    assert run_compat_train([configuration, "nnUNetTrainerV2", TASK_ID, "0"]) == 2
