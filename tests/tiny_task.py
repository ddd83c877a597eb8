"""A tiny synthetic task planned and preprocessed for real, with plans shrunk so that CPU training takes seconds.

Synthetic cases (20 x 24 x 16 voxels by default, anisotropic spacing so that the plans transpose the axes,
non-trivial origin and direction so that a wrong geometry shows) go through the real ``plan_and_preprocess``;
every stage of both plans files is then shrunk to patch 16^3 (16^2 in 2D), batch 2 and two pooling steps.
Shared by the training tests and the model-selection tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.factories import make_cases, write_nnunet_task

SHAPE = (20, 24, 16)
SPACING = (1.0, 1.0, 1.5)  # array order: the coarsest axis is the last one -> transpose_forward [2, 0, 1]
ORIGIN = (3.0, -7.5, 12.25)
DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
TRAINER_DIR = "nnUNetTrainerV2__nnUNetPlansv2.1"


@dataclass(frozen=True)
class TinyTask:
    """Where a synthetic task lives (raw folder, ``nnUNet_preprocessed`` root, task name, case ids)."""

    raw_dir: Path
    preprocessed_root: Path
    case_ids: list[str]
    task: str

    @property
    def preprocessed_dir(self) -> Path:
        """``$nnUNet_preprocessed/<task>``."""
        return self.preprocessed_root / self.task


def shrink_plans(preprocessed_dir: Path) -> None:
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


def build_tiny_task(base: Path, task: str, n_cases: int = 10, shape: tuple[int, int, int] = SHAPE) -> TinyTask:
    """Write, plan and preprocess ``n_cases`` synthetic cases as ``task`` under ``base``; shrink the plans.

    The raw task goes to ``base/raw/nnUNet_raw_data/<task>`` (so ``base/raw`` is ``nnUNet_raw_data_base``), the
    preprocessed one to ``base/preprocessed/<task>``. ``splits_final.json`` (5 folds) is written up front so that
    concurrent trainings only ever read it.
    """
    from stages.preprocess.pipeline import plan_and_preprocess
    from stages.train.splits import load_or_create_splits

    cases = make_cases(n_cases, shape=shape, spacing=SPACING)
    for c in cases:
        c.origin, c.direction = ORIGIN, DIRECTION
    raw = write_nnunet_task(base / "raw" / "nnUNet_raw_data" / task, cases)
    pre_root = base / "preprocessed"
    result = plan_and_preprocess(raw, pre_root / task, num_processes_lowres=1, num_processes_fullres=1)
    assert set(result.configurations) >= {"2d", "3d_fullres"}
    shrink_plans(pre_root / task)
    load_or_create_splits(pre_root / task / "splits_final.json", [c.case_id for c in cases])
    return TinyTask(raw, pre_root, [c.case_id for c in cases], task)


def set_env(monkeypatch: pytest.MonkeyPatch, task: TinyTask, results: Path, export_workers: int = 0) -> None:
    """Point the nnU-Net v1 variables at ``task`` and ``results``; exports in-process unless told otherwise."""
    monkeypatch.setenv("nnUNet_preprocessed", str(task.preprocessed_root))
    monkeypatch.setenv("RESULTS_FOLDER", str(results))
    monkeypatch.setenv("NNKUBE_EXPORT_WORKERS", str(export_workers))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")


def run_compat_train(argv: list[str]) -> int:
    """``nnUNet_train <argv>`` in this process, with one torch thread."""
    import torch
    from nnkube.nnunet_compat.train import run

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(argv)
    finally:
        torch.set_num_threads(before)
