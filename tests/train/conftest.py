"""A tiny preprocessed synthetic task, built once per session, and the helpers the training tests share.

Ten synthetic cases (20 x 24 x 16 voxels, anisotropic spacing so the plans transpose the axes, non-trivial
origin and direction so a wrong geometry shows) go through the real ``plan_and_preprocess``; the plans are then
shrunk so that training is cheap on a CPU: patch 16^3 (16^2 in 2D), batch 2, two pooling steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.factories import make_cases, write_nnunet_task

TASK = "Task099_TinyTrain"
TASK_ID = "99"
TRAINER_DIR = "nnUNetTrainerV2__nnUNetPlansv2.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
SHAPE = (20, 24, 16)
SPACING = (1.0, 1.0, 1.5)  # array order: the coarsest axis is the last one -> transpose_forward [2, 0, 1]
ORIGIN = (3.0, -7.5, 12.25)
DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


@dataclass(frozen=True)
class TinyTask:
    """Where the synthetic task lives."""

    raw_dir: Path
    preprocessed_root: Path
    case_ids: list[str]

    @property
    def preprocessed_dir(self) -> Path:
        """``$nnUNet_preprocessed/<task>``."""
        return self.preprocessed_root / TASK


def _shrink_plans(preprocessed_dir: Path) -> None:
    """Patch 16^3 / 16^2, batch 2 and two 2x pooling steps in every stage of both plans files."""
    from stages.plan.models import Plans, plans_filename

    for dim, ndim in (("3D", 3), ("2D", 2)):
        path = preprocessed_dir / plans_filename(dim)
        plans = Plans.load(path)
        for stage in plans.plans_per_stage.values():
            stage.patch_size = [16] * ndim
            stage.batch_size = 2
            stage.num_pool_per_axis = [2] * ndim
            stage.pool_op_kernel_sizes = [[2] * ndim, [2] * ndim]
            stage.conv_kernel_sizes = [[3] * ndim] * 3
        plans.save(path)


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory: pytest.TempPathFactory) -> TinyTask:
    """Raw and preprocessed synthetic task (built once per session; treat it as read-only)."""
    from stages.preprocess.pipeline import plan_and_preprocess
    from stages.train.splits import load_or_create_splits

    base = tmp_path_factory.mktemp("tiny_task")
    cases = make_cases(10, shape=SHAPE, spacing=SPACING)
    for c in cases:
        c.origin, c.direction = ORIGIN, DIRECTION
    raw = write_nnunet_task(base / "raw" / "nnUNet_raw_data" / TASK, cases)
    pre_root = base / "preprocessed"
    result = plan_and_preprocess(raw, pre_root / TASK, num_processes_lowres=1, num_processes_fullres=1)
    assert set(result.configurations) >= {"2d", "3d_fullres"}
    _shrink_plans(pre_root / TASK)
    # written up front so that concurrent trainings (DDP ranks, parallel tests) only ever read it
    load_or_create_splits(pre_root / TASK / "splits_final.json", [c.case_id for c in cases])
    return TinyTask(raw, pre_root, [c.case_id for c in cases])


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


def set_env(monkeypatch: pytest.MonkeyPatch, task: TinyTask, results: Path, export_workers: int = 0) -> None:
    """Point the nnU-Net v1 variables at ``task`` and ``results``; exports in-process unless told otherwise."""
    monkeypatch.setenv("nnUNet_preprocessed", str(task.preprocessed_root))
    monkeypatch.setenv("RESULTS_FOLDER", str(results))
    monkeypatch.setenv("NNKUBE_EXPORT_WORKERS", str(export_workers))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")


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
