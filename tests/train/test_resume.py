"""Pre-emption: a SIGKILLed deterministic run resumed with ``-c`` equals an uninterrupted one; SIGTERM saves.

The killed run is a real ``nnUNet_train`` process; the uninterrupted reference and the resumed run execute in
this process, so the comparison also checks that deterministic training is reproducible across processes.
"""

from __future__ import annotations

import re
import signal
import time

import pytest
import torch

from stages.train.checkpoint import (
    BEST,
    FINAL,
    LATEST,
    TrainingState,
    load_checkpoint,
    save_checkpoint,
    sidecar,
)
from tests.train.conftest import TASK_ID, fold_dir, run_compat_train, set_env, start_training, wait_for

MAX_EPOCHS = 4
ARGS = ["3d_fullres", "nnUNetTrainerV2", TASK_ID, "0", "--epochs", str(MAX_EPOCHS), "--iterations", "3",
        "--val_iterations", "1", "--save_every", "1", "--deterministic", "--num_workers", "0",
        "--disable_validation"]
CURVES = ("train_losses", "val_losses", "val_eval_metrics", "ema_metrics", "learning_rates")


def _epoch(path) -> int | None:
    try:
        return TrainingState.load(path).epoch
    except Exception:  # noqa: BLE001 - not written yet
        return None


def _assert_curves_equal(state: TrainingState, reference: TrainingState, epochs: int) -> None:
    for name in CURVES:
        got, want = getattr(state, name), getattr(reference, name)[:epochs]
        assert len(got) == epochs, name
        assert got == want, f"{name}: {got} != {want}"


@pytest.mark.slow
def test_sigkill_then_continue_matches_uninterrupted_run(tiny_task, tmp_path, monkeypatch):
    reference_results = tmp_path / "reference"
    set_env(monkeypatch, tiny_task, reference_results)
    assert run_compat_train(ARGS) == 0
    reference_fold = fold_dir(reference_results)
    reference_blob, reference = load_checkpoint(reference_fold / FINAL)
    assert reference.epoch == MAX_EPOCHS

    results = tmp_path / "killed"
    fold = fold_dir(results)
    log_file = tmp_path / "killed.log"
    proc = start_training(tiny_task, results, ARGS, log_file)
    latest_json = sidecar(fold / LATEST)
    wait_for(lambda: (_epoch(latest_json) or 0) >= 2, proc, 240, "model_latest.model of epoch 2", log_file)
    time.sleep(0.2)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (fold / FINAL).exists()

    killed_blob, killed = load_checkpoint(fold / LATEST)
    k = killed.epoch
    assert 2 <= k < MAX_EPOCHS and not killed.finished
    _assert_curves_equal(killed, reference, k)  # a separate process computed the same first k epochs
    assert "optimizer" in killed_blob

    set_env(monkeypatch, tiny_task, results)
    assert run_compat_train([*ARGS, "-c"]) == 0
    resumed_blob, resumed = load_checkpoint(fold / FINAL)
    logs = "".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
    assert f"loaded {LATEST} (epoch {k})" in logs
    logged_epochs = [int(m) for m in re.findall(r"epoch (\d+)/\d+: train loss", logs)]
    assert logged_epochs == list(range(1, MAX_EPOCHS + 1))  # the killed epoch k+1 is redone, nothing else
    assert resumed.finished and resumed.epoch == MAX_EPOCHS
    _assert_curves_equal(resumed, reference, MAX_EPOCHS)
    assert resumed.best_epoch == reference.best_epoch and resumed.best_ema == reference.best_ema
    for name, tensor in reference_blob["network"].items():
        assert torch.equal(resumed_blob["network"][name], tensor), name
    assert not (fold / LATEST).exists()


def test_state_inside_the_checkpoint_wins_over_a_stale_sidecar(tmp_path):
    """A kill between replacing ``model_latest.model`` and rewriting its sidecar must not mix two epochs."""
    net = torch.nn.Linear(3, 2)
    state = TrainingState(trainer="nnUNetTrainerV2", configuration="3d_fullres", fold="0", num_input_channels=1,
                          num_classes=2, max_epochs=4, iterations_per_epoch=1, epoch=1, train_losses=[0.5])
    path = save_checkpoint(tmp_path / LATEST, net, state)
    stale = sidecar(path).read_bytes()
    with torch.no_grad():
        net.weight.add_(1.0)
    state.epoch, state.train_losses = 2, [0.5, 0.25]
    save_checkpoint(path, net, state)
    sidecar(path).write_bytes(stale)  # as if killed before the sidecar was rewritten
    blob, loaded = load_checkpoint(path)
    assert loaded.epoch == 2 and loaded.train_losses == [0.5, 0.25]
    assert torch.equal(blob["network"]["weight"], net.weight) and set(blob) == {"network"}


def test_sigterm_saves_latest_and_exits_75(tiny_task, tmp_path):
    results = tmp_path / "results"
    fold = fold_dir(results)
    log_file = tmp_path / "sigterm.log"
    args = ["3d_fullres", "nnUNetTrainerV2", TASK_ID, "0", "--epochs", "100", "--iterations", "3",
            "--val_iterations", "1", "--num_workers", "1", "--disable_validation"]
    proc = start_training(tiny_task, results, args, log_file)
    wait_for(lambda: sidecar(fold / BEST).is_file(), proc, 240, "the first epoch", log_file)
    assert not (fold / LATEST).exists()  # save_every 50: nothing periodic yet
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75, log_file.read_text()[-3000:]
    blob, state = load_checkpoint(fold / LATEST)  # weights_only load
    assert {"network", "optimizer"} <= set(blob)
    assert 1 <= state.epoch < 100 and not state.finished
    assert not (fold / FINAL).exists()
    assert "SIGTERM" in log_file.read_text()
