"""CUDA paths: AMP training, GPU inference against the CPU, DDP over NCCL (marker ``gpu``; skipped without CUDA).

The CPU tests cover the same code with AMP off and gloo; these check what only a GPU exercises: autocast with a
GradScaler, pinned-memory transfers, fp16 sliding-window inference, and NCCL all-reduces across two devices.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.tiny_task import set_env
from tests.train.conftest import REPO_ROOT, TASK_ID, check_validation, fold_dir, validation_keys

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_amp_training_on_cuda(tiny_task, trained_3d):
    from stages.train.checkpoint import FINAL, TrainingState, load_checkpoint, sidecar

    fold = trained_3d.fold_dir  # trained with the default device, which is CUDA here
    log_text = next(fold.glob("training_log_*.txt")).read_text()
    assert "device cuda" in log_text and "amp True" in log_text
    state = TrainingState.load(sidecar(fold / FINAL))
    assert state.finished and state.epoch == 2
    assert all(np.isfinite(state.train_losses)) and all(np.isfinite(state.val_losses))
    blob, _ = load_checkpoint(fold / FINAL, map_location="cpu")
    assert blob.get("grad_scaler"), "the GradScaler state is checkpointed for -c"
    assert all(t.device.type == "cpu" for t in blob["network"].values())
    check_validation(fold, tiny_task)


def test_gpu_inference_matches_the_cpu(tiny_task, trained_3d):
    from stages.predict.engine import predict_preprocessed
    from stages.predict.predictor import load_model

    case = validation_keys(tiny_task)[0]
    stage_folder = next(p for p in tiny_task.preprocessed_dir.iterdir() if p.name.endswith("_stage0")
                        and "2D" not in p.name)
    data = np.load(stage_folder / f"{case}.npy")
    probs = {}
    for device in ("cpu", "cuda"):
        model = load_model(trained_3d.fold_dir.parent, folds=[0], device=device)
        stage_plan = model.plans.configuration(model.configuration)
        probs[device] = predict_preprocessed(model.networks, data, stage_plan, "3d", model.num_classes,
                                             mirror_axes=(0, 1, 2), device=model.device, amp=model.amp)
    assert probs["cuda"].shape == probs["cpu"].shape
    assert np.abs(probs["cuda"] - probs["cpu"]).max() < 2e-2  # fp16 autocast on the GPU
    assert np.mean(probs["cuda"].argmax(0) == probs["cpu"].argmax(0)) > 0.99


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs two CUDA devices")
def test_ddp_over_nccl_on_two_gpus(tiny_task, tmp_path, monkeypatch):
    from nnkube.nnunet_compat.train import main_ddp

    from stages.train.checkpoint import FINAL, TrainingState, sidecar

    results = tmp_path / "results"
    set_env(monkeypatch, tiny_task, results)
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(sys, "argv", ["nnUNet_train_DDP", "3d_fullres", "nnUNetTrainerV2", TASK_ID, "0",
                                      "-gpus", "2", "--epochs", "1", "--iterations", "2", "--val_iterations", "1"])
    assert main_ddp() == 0
    fold = fold_dir(results)
    state = TrainingState.load(sidecar(fold / FINAL))
    assert state.world_size == 2 and state.finished and all(np.isfinite(state.train_losses))
    log_text = next(fold.glob("training_log_*.txt")).read_text()
    assert "world 2" in log_text and "device cuda:0" in log_text  # rank 0 (on the first GPU) alone writes
    check_validation(fold, tiny_task)
