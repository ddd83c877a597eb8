"""A tiny preprocessed synthetic task, built once per session, and the helpers the training tests share.

Ten synthetic cases built by :func:`tests.tiny_task.build_tiny_task` (real ``plan_and_preprocess``, plans shrunk
to patch 16^3 / 16^2, batch 2, two pooling steps so that training is cheap on a CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_task import TRAINER_DIR, TinyTask, build_tiny_task, run_compat_train, set_env

TASK = "Task099_TinyTrain"
TASK_ID = "99"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory: pytest.TempPathFactory) -> TinyTask:
    """Raw and preprocessed synthetic task (built once per session; treat it as read-only)."""
    return build_tiny_task(tmp_path_factory.mktemp("tiny_task"), TASK)


@pytest.fixture
def single_thread_torch():
    """One intra-op torch thread (the tests' networks are tiny; threads only add contention)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def results_env(tiny_task: TinyTask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``nnUNet_preprocessed`` -> the tiny task, ``RESULTS_FOLDER`` -> a fresh folder (returned)."""
    results = tmp_path / "results"
    set_env(monkeypatch, tiny_task, results)
    return results


def fold_dir(results: Path, configuration: str = "3d_fullres", fold: int | str = 0,
             trainer_dir: str = TRAINER_DIR) -> Path:
    """The seed's fold folder ``$RESULTS_FOLDER/nnUNet/<cfg>/<task>/<trainer>__<plans>/fold_<f>``."""
    return results / "nnUNet" / configuration / TASK / trainer_dir / f"fold_{fold}"


def validation_keys(task: TinyTask, fold: int = 0) -> list[str]:
    """Validation cases of ``fold`` from the task's splits file (written by the first training)."""
    from stages.train.splits import read_splits

    return sorted(read_splits(task.preprocessed_dir / "splits_final.json").splits[fold].val)


def subprocess_env(task: TinyTask, results: Path) -> dict[str, str]:
    """Environment of a training subprocess: the task's folders, one thread, in-process augmentation."""
    env = dict(os.environ)
    env.update({
        "nnUNet_preprocessed": str(task.preprocessed_root), "RESULTS_FOLDER": str(results),
        "NNKUBE_EXPORT_WORKERS": "0", "nnUNet_n_proc_DA": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
    })
    return env


def start_training(task: TinyTask, results: Path, args: list[str], log_file: Path) -> subprocess.Popen:
    """``python -m nnkube.nnunet_compat.train <args>`` in the background, output to ``log_file``."""
    fh = open(log_file, "wb")  # noqa: SIM115 - closed by the child's exit; kept open for the process
    return subprocess.Popen([sys.executable, "-m", "nnkube.nnunet_compat.train", *args], cwd=REPO_ROOT,
                            env=subprocess_env(task, results), stdout=fh, stderr=subprocess.STDOUT)


def wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str, log_file: Path,
             interval: float = 0.05) -> None:
    """Poll ``predicate`` until true; fail with the child's log if it exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before {what}:\n{log_file.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"timed out waiting for {what}:\n{log_file.read_text()[-4000:]}")
        time.sleep(interval)


@dataclass(frozen=True)
class TrainedFold:
    """A finished single-process training of the tiny task."""

    results: Path
    fold_dir: Path
    seconds: float


@pytest.fixture(scope="session")
def trained_3d(tiny_task: TinyTask, tmp_path_factory: pytest.TempPathFactory) -> TrainedFold:
    """``nnUNet_train 3d_fullres nnUNetTrainerV2 99 0 --epochs 2 --iterations 3`` with final validation.

    One augmentation worker and one export process, so that the background pipelines run too.
    """
    results = tmp_path_factory.mktemp("trained_3d") / "results"
    with pytest.MonkeyPatch.context() as mp:
        set_env(mp, tiny_task, results, export_workers=1)
        start = time.monotonic()
        rc = run_compat_train(["3d_fullres", "nnUNetTrainerV2", TASK_ID, "0", "--epochs", "2", "--iterations", "3",
                               "--val_iterations", "1", "--num_workers", "1"])
        seconds = time.monotonic() - start
    assert rc == 0
    return TrainedFold(results, fold_dir(results), seconds)


def _dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float | None:
    p, r = pred == label, ref == label
    denom = int(p.sum()) + int(r.sum())
    return None if denom == 0 else 2.0 * int((p & r).sum()) / denom


def check_validation(fold: Path, task: TinyTask, npz: bool = False) -> dict:
    """Assert the final validation's outputs for every validation case of fold 0; returns summary.json.

    Segmentations must carry the raw image's exact geometry; summary.json must list every case with Dice
    values that agree with the files, per label (background included) and as the foreground ``mean``.
    """
    from stages.imageio import read_image
    from stages.preprocess.models import CaseProperties

    keys = validation_keys(task)
    out = fold / "validation_raw"
    for case in keys:
        seg, geometry = read_image(out / f"{case}.nii.gz")
        _, raw_geometry = read_image(task.raw_dir / "imagesTr" / f"{case}_0000.nii.gz")
        assert geometry == raw_geometry, (case, geometry.mismatches(raw_geometry))
        assert set(np.unique(seg).tolist()) <= {0, 1, 2}
        if npz:
            with np.load(out / f"{case}.npz") as f:
                assert list(f.keys()) == ["softmax"]
                softmax = f["softmax"]
            assert softmax.dtype == np.float16
            assert softmax.shape == (3, *raw_geometry.array_shape)
            np.testing.assert_allclose(softmax.astype(np.float32).sum(0), 1.0, atol=5e-3)
            assert np.mean(np.argmax(softmax, axis=0) == seg) > 0.99
            assert CaseProperties.load(out / f"{case}.json").case_id == case
        else:
            assert not (out / f"{case}.npz").exists()
    summary = json.loads((out / "summary.json").read_text())
    per_case = summary["results"]["all"]
    assert sorted(Path(e["test"]).name for e in per_case) == [f"{k}.nii.gz" for k in keys]
    for entry in per_case:
        pred, _ = read_image(entry["test"])
        ref, _ = read_image(entry["reference"])
        for label in (0, 1, 2):
            expected = _dice(pred, ref, label)
            got = entry[str(label)]["Dice"]
            assert (got is None) if expected is None else got == pytest.approx(expected, abs=1e-6), (entry, label)
    mean = summary["results"]["mean"]
    for label in ("0", "1", "2"):
        values = [e[label]["Dice"] for e in per_case if e[label]["Dice"] is not None]
        assert mean[label]["Dice"] == pytest.approx(float(np.mean(values)))
    assert mean["mean"]["Dice"] == pytest.approx(float(np.mean([mean["1"]["Dice"], mean["2"]["Dice"]])))
    return summary


def checkpoint_files(fold: Path) -> dict[str, bytes]:
    """Content of every checkpoint file and sidecar of a fold folder."""
    return {p.name: p.read_bytes() for p in sorted(fold.glob("model_*"))}
