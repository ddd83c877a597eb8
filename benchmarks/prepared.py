"""Preprocessed Hippocampus for the training and prediction benchmarks: made once (untimed), then reused.

Both sides' data live under ``.bench/data/<dataset>-<hash of its path>/`` (``nnkube/`` and ``v2/``), apart
from the preprocessing benchmark's folders (which that benchmark wipes before every timed run). Each side is
prepared with the same commands the preprocessing benchmark times:

* nnkube: ``nnUNet_convert_decathlon_task`` + ``nnUNet_plan_and_preprocess -t 4 -pl2d None``;
* nnU-Net v2: the v2 raw layout (symlinks) + ``nnunetv2_launcher.py plan_and_preprocess -d 4 -c 3d_fullres``.

A side counts as prepared once its ``.complete`` marker exists (written after the commands succeeded); delete
the side's folder to rebuild it. Trained models are not kept here: each benchmark points each side's results
folder at its own scratch folder (:func:`with_results`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import bench_preprocess
import harness

DATA_DIR = harness.BENCH_DIR / "data"
TASK_ID = bench_preprocess.TASK_ID
CONFIGURATION = "3d_fullres"
FOLD = 0
_MARKER = ".complete"


@dataclass(frozen=True)
class Prepared:
    """One side's preprocessed task: environment for its commands and its folders.

    Attributes:
        env: Environment with the side's data folders (``nnUNet_raw_data_base``/``nnUNet_preprocessed`` for
            nnkube, ``nnUNet_raw``/``nnUNet_preprocessed`` for v2); results folder still to be set.
        task_dir: The task's preprocessed folder (plans, splits, configuration folders).
        task_name: ``Task004_Hippocampus`` (nnkube) or ``Dataset004_Hippocampus`` (v2).
    """

    env: dict[str, str]
    task_dir: Path
    task_name: str


def data_root(dataset: Path) -> Path:
    """Folder of the prepared data of ``dataset`` (one per dataset path, so that datasets do not mix)."""
    digest = hashlib.sha256(str(dataset.resolve()).encode()).hexdigest()[:8]
    return DATA_DIR / f"{dataset.name}-{digest}"


def _task_suffix(dataset: Path) -> str:
    return dataset.name.split("_", 1)[1]


def _is_complete(root: Path) -> bool:
    return (root / _MARKER).is_file()


def _mark_complete(root: Path, dataset: Path) -> None:
    (root / _MARKER).write_text(json.dumps({"dataset": str(dataset)}) + "\n")


def nnkube_data(dataset: Path, nproc: int, root: Path | None = None) -> Prepared:
    """nnkube's converted and preprocessed task under ``root`` (default ``<data_root>/nnkube``); made if absent.

    Raises:
        RuntimeError: a preparation command failed (its log is under ``root``).
    """
    root = root or data_root(dataset) / "nnkube"
    task = f"Task{TASK_ID:03d}_{_task_suffix(dataset)}"
    if not _is_complete(root):
        harness.reset_dir(root)
        env = harness.nnkube_env(root)
        harness.log(f"{harness.OURS_NAME}: converting and preprocessing {dataset.name} into {root} (untimed)")
        harness.run_measured(bench_preprocess.nnkube_convert_cmd(dataset, root, nproc), env, root / "convert.log")
        harness.run_measured(bench_preprocess.nnkube_preprocess_cmd(dataset, root, nproc), env,
                             root / "preprocess.log")
        _mark_complete(root, dataset)
    env = harness.nnkube_env(root)
    return Prepared(env, Path(env["nnUNet_preprocessed"]) / task, task)


def v2_data(dataset: Path, nproc: int, root: Path | None = None) -> Prepared:
    """nnU-Net v2's raw layout and preprocessed task under ``root`` (default ``<data_root>/v2``); made if absent.

    Raises:
        RuntimeError: the preprocessing command failed (its log is under ``root``).
    """
    root = root or data_root(dataset) / "v2"
    if not _is_complete(root):
        harness.reset_dir(root)
        env = harness.v2_env(root)
        harness.prepare_v2_raw(dataset, Path(env["nnUNet_raw"]), TASK_ID)
        harness.log(f"{harness.V2_NAME}: preprocessing {dataset.name} into {root} (untimed)")
        harness.run_measured(bench_preprocess.v2_preprocess_cmd(nproc), env, root / "preprocess.log")
        _mark_complete(root, dataset)
    env = harness.v2_env(root)
    name = f"Dataset{TASK_ID:03d}_{_task_suffix(dataset)}"
    return Prepared(env, Path(env["nnUNet_preprocessed"]) / name, name)


def prepare(side: str, dataset: Path, nproc: int) -> Prepared:
    """The prepared data of ``side`` (:data:`harness.OURS_NAME` or :data:`harness.V2_NAME`)."""
    return nnkube_data(dataset, nproc) if side == harness.OURS_NAME else v2_data(dataset, nproc)


def prepare_sides(sides: list[str], dataset: Path, nproc: int, report: dict) -> dict[str, Prepared]:
    """Prepare every side first (so that the timed runs follow each other closely); failures go to ``report``.

    Records each side's 3d_fullres patch and batch size under ``report["plans"]`` and a failed preparation
    under ``report["sides"][side]["error"]``; returns the sides that are ready.
    """
    ready: dict[str, Prepared] = {}
    for side in sides:
        try:
            ready[side] = prepare(side, dataset, nproc)
            report.setdefault("plans", {})[side] = plans_summary(side, ready[side])
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            harness.log(f"{side}: preparing the data FAILED: {exc}")
            report["sides"][side] = {"error": f"preparing the data failed: {str(exc)[-3000:]}"}
    return ready


def with_results(side: str, prepared: Prepared, results: Path, threads: int, workers: int) -> dict[str, str]:
    """Environment of ``side`` with its results folder at ``results`` and the shared thread/worker settings.

    ``OMP_NUM_THREADS`` fixes torch's default intra-op threads where a command does not set them itself, and
    ``nnUNet_n_proc_DA`` the augmentation workers (both nnU-Net versions read it; nnkube too).
    """
    results.mkdir(parents=True, exist_ok=True)
    var = "RESULTS_FOLDER" if side == harness.OURS_NAME else "nnUNet_results"
    return harness.side_env(prepared.env, **{var: results, "OMP_NUM_THREADS": threads, "nnUNet_n_proc_DA": workers})


def plans_summary(side: str, prepared: Prepared) -> dict[str, object]:
    """Patch and batch size of the 3d_fullres plans of ``side`` (to show that both sides train the same)."""
    if side == harness.OURS_NAME:
        plans = json.loads((prepared.task_dir / "nnUNetPlansv2.1_plans_3D.json").read_text())
        stages = plans["plans_per_stage"]
        stage = stages[str(max(int(k) for k in stages))] if isinstance(stages, dict) else stages[-1]
        return {"patch_size": stage["patch_size"], "batch_size": stage["batch_size"]}
    plans = json.loads((prepared.task_dir / "nnUNetPlans.json").read_text())
    config = plans["configurations"][CONFIGURATION]
    return {"patch_size": config["patch_size"], "batch_size": config["batch_size"]}
