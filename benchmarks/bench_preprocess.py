"""Preprocessing benchmark: nnkube vs. nnU-Net v2 on the MSD Hippocampus, side by side in one run.

Both sides start from raw NIfTI and end with the 3d_fullres training data on disk, with the same number of
worker processes:

* nnU-Net v2: fingerprint + plans + ``3d_fullres`` preprocessing (``nnunetv2_launcher.py plan_and_preprocess``,
  i.e. ``nnUNetv2_plan_and_preprocess -d 4 -c 3d_fullres -np N -npfp N``), in its own venv.
* nnkube: ``nnUNet_plan_and_preprocess -t 4 -tl N -tf N -pl2d None`` (crop + fingerprint + plans v2.1 +
  preprocessing; 2D planning is switched off so that both sides prepare the 3D data only), after an untimed
  ``nnUNet_convert_decathlon_task``.

Every timed run starts from an empty output folder; repeats alternate the sides. Reports wall and CPU seconds,
peak memory of the process tree and the v2/ours ratios as a table, and as JSON with ``--json PATH``.

    python benchmarks/bench_preprocess.py --nproc 2 --repeats 1 --json .bench/preprocess.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness

TASK_ID = 4


def nnkube_convert_cmd(dataset: Path, workdir: Path, nproc: int) -> list[str]:
    """Untimed setup for our side: MSD task -> ``$nnUNet_raw_data_base/nnUNet_raw_data/Task004_...``."""
    del workdir  # the destination comes from nnUNet_raw_data_base (see harness.nnkube_env)
    return [harness.nnkube_bin("nnUNet_convert_decathlon_task"), "-i", str(dataset), "-p", str(nproc)]


def nnkube_preprocess_cmd(dataset: Path, workdir: Path, nproc: int) -> list[str]:
    """The timed command of our side (runs in the nnkube venv with :func:`harness.nnkube_env`)."""
    del dataset, workdir  # the task is found through nnUNet_raw_data_base
    return [harness.nnkube_bin("nnUNet_plan_and_preprocess"), "-t", str(TASK_ID), "-tl", str(nproc),
            "-tf", str(nproc), "-pl2d", "None"]


def v2_preprocess_cmd(nproc: int) -> list[str]:
    """The timed command of the nnU-Net v2 side (runs in its venv with :func:`harness.v2_env`)."""
    return harness.v2_launcher_cmd("plan_and_preprocess", "-d", TASK_ID, "-np", nproc, "-c", "3d_fullres")


def _count_seg_files(folders: list[Path]) -> int:
    return sum(len(list(folder.glob("*_seg.*"))) for folder in folders)


@dataclass
class Side:
    """One contestant: its timed command, environment, what to wipe before a run and how to count outputs."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    wipe: list[Path]
    outputs: Callable[[], int]


def _v2_side(dataset: Path, workdir: Path, nproc: int) -> Side:
    root = workdir / "v2"
    env = harness.v2_env(root)
    raw = harness.prepare_v2_raw(dataset, Path(env["nnUNet_raw"]), TASK_ID)
    preprocessed = Path(env["nnUNet_preprocessed"]) / raw.name
    return Side(harness.V2_NAME, v2_preprocess_cmd(nproc), env, [preprocessed],
                lambda: _count_seg_files([preprocessed / "nnUNetPlans_3d_fullres"]))


def _nnkube_side(dataset: Path, workdir: Path, nproc: int) -> Side:
    root = workdir / "nnkube"
    env = harness.nnkube_env(root)
    task = f"Task{TASK_ID:03d}_{dataset.name.split('_', 1)[1]}"
    raw_base = Path(env["nnUNet_raw_data_base"])
    if not (raw_base / "nnUNet_raw_data" / task / "dataset.json").is_file():
        harness.log("converting the MSD task for nnkube (untimed)")
        harness.run_measured(nnkube_convert_cmd(dataset, workdir, nproc), env, root / "convert.log")
    preprocessed = Path(env["nnUNet_preprocessed"]) / task

    def outputs() -> int:
        stages = [p for p in preprocessed.glob("nnUNetData_plans_v2.1_stage*") if p.is_dir()]
        return _count_seg_files(stages)

    return Side(harness.OURS_NAME, nnkube_preprocess_cmd(dataset, workdir, nproc), env,
                [preprocessed, raw_base / "nnUNet_cropped_data" / task], outputs)


def run(dataset: Path, workdir: Path, nproc: int, repeats: int, sides: list[str]) -> dict[str, Any]:
    """Run the benchmark; return the JSON-able report (sides that fail are reported with their error)."""
    builders = {harness.V2_NAME: _v2_side, harness.OURS_NAME: _nnkube_side}
    contestants: dict[str, Side] = {}
    report: dict[str, Any] = {"benchmark": "preprocess", "dataset": str(dataset), "nproc": nproc,
                              "machine": harness.machine_info(), "sides": {}}
    for name in sides:
        try:
            contestants[name] = builders[name](dataset, workdir, nproc)
        except (RuntimeError, OSError, ValueError) as exc:
            harness.log(f"{name}: setup failed: {exc}")
            report["sides"][name] = {"error": f"setup failed: {exc}"}
    runs: dict[str, list[harness.Measurement]] = {name: [] for name in contestants}
    for rep in range(repeats):
        for name, side in list(contestants.items()):
            for path in side.wipe:
                harness.reset_dir(path)
            harness.log(f"{name}: run {rep + 1}/{repeats}: {' '.join(side.cmd)}")
            try:
                m = harness.run_measured(side.cmd, side.env, workdir / f"{side.name.replace(' ', '_')}.log")
            except RuntimeError as exc:
                harness.log(f"{name}: FAILED: {exc}")
                report["sides"][name] = {"error": str(exc)[-2000:]}
                del contestants[name]
                continue
            runs[name].append(m)
            harness.log(f"{name}: {m.wall_s:.1f} s wall, {m.peak_tree_mb:.0f} MB tree peak")
    for name, measured in runs.items():
        if name in contestants and measured:
            report["sides"][name] = {**harness.summarize(measured), "cases_written": contestants[name].outputs(),
                                     "command": contestants[name].cmd}
    done = {n: s for n, s in report["sides"].items() if "error" not in s}
    if harness.V2_NAME in done and harness.OURS_NAME in done:
        report["ratio_v2_over_ours"] = harness.ratios(done[harness.V2_NAME], done[harness.OURS_NAME])
    harness.print_table(f"preprocess 3d_fullres, {dataset.name}, {nproc} processes",
                        {n: done.get(n) for n in sides})
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="MSD task folder (default $NNKUBE_HIPPOCAMPUS or "
                                          "../shared/datasets/Task04_Hippocampus)")
    parser.add_argument("--nproc", type=int, default=2, help="worker processes, the same for both sides")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per side (min and median reported)")
    parser.add_argument("--workdir", type=Path, default=harness.BENCH_DIR / "preprocess",
                        help="scratch folder for both sides' data (default .bench/preprocess)")
    parser.add_argument("--side", choices=[harness.V2_NAME, harness.OURS_NAME], action="append",
                        help="run only this side (repeatable; default both)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    dataset = harness.dataset_path(args.dataset)
    if dataset is None:
        return 0
    report = run(dataset, args.workdir.resolve(), args.nproc, args.repeats,
                 args.side or [harness.V2_NAME, harness.OURS_NAME])
    if args.json:
        harness.write_json(args.json, report)
    return 0 if all("error" not in s for s in report["sides"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
