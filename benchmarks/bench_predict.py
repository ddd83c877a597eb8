"""Prediction benchmark: nnkube vs. nnU-Net v2 inference on MSD Hippocampus test images, side by side in one run.

Both sides predict the same ``--cases`` images of ``imagesTs`` (sorted, the first K) with a 3d_fullres model of
fold 0, sliding window with step 0.5 and Gaussian weighting, with mirroring test-time augmentation on and off,
as whole processes with the same number of preprocessing/export processes:

* nnkube: ``nnUNet_predict -t 4 -m 3d_fullres -f 0 --step_size 0.5 [--disable_tta]``;
* nnU-Net v2: ``nnunetv2_launcher.py predict -d 4 -c 3d_fullres -f 0 --step-size 0.5 [--disable-tta]``
  (``nnUNetPredictor``), torch threads = the CPUs available (what ``nnUNetv2_predict`` sets on the CPU).

The models are trained on the fly with a tiny budget (``--train-iterations`` iterations of one epoch; the speed of
inference does not depend on the weights) and reused by later runs (delete ``.bench/predict/<side>/results`` to
retrain). The same topology on both sides: 4 stages of 32-256 features, patch 40x56x40.

Reported per side and TTA setting: wall seconds per case (process wall / K), seconds per case after the model is
loaded (wall minus the time until the side logs that it starts predicting, i.e. without interpreter start,
imports and model loading), the mean network time per case each side logs (sliding window + mirroring; nnkube
logs it with 0.1 s resolution), thread counts, and the ratios v2/ours (> 1: nnkube faster; target >= 1.5 with
TTA on).

    python benchmarks/bench_predict.py --cases 10 --nproc 2 --json .bench/predict.json
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import harness
import prepared

TRAINER = "nnUNetTrainerV2"
STEP_SIZE = 0.5
FIGURES = ("s_per_case", "s_per_case_after_load", "network_s_per_case")
_OURS_READY = re.compile(r"predicting \d+ case\(s\) of ")
_OURS_CASE = re.compile(r"predicted \d+/\d+: .* in ([0-9.]+) s")
_OURS_WORKERS = re.compile(r"sliding window: .* \((\d+) workers\)")
_V2_READY = re.compile(r"^PHASE load ")
_V2_CASE = re.compile(r"^CASE_SECONDS ([0-9.]+)")
_V2_THREADS = re.compile(r"^THREADS (\d+)")


def input_folder(dataset: Path, workdir: Path, k: int) -> tuple[Path, list[str]]:
    """A folder of ``<case>_0000.nii.gz`` symlinks to the first ``k`` (sorted) MSD test images; its case ids.

    Raises:
        ValueError: the dataset has fewer than ``k`` test images.
    """
    images = sorted((dataset / "imagesTs").glob("*.nii.gz"))
    if len(images) < k:
        raise ValueError(f"{dataset / 'imagesTs'}: {len(images)} test image(s), fewer than --cases {k}")
    folder = workdir / f"input_{k}"
    harness.reset_dir(folder)
    folder.mkdir(parents=True)
    cases = []
    for image in images[:k]:
        case = image.name.removesuffix(".nii.gz")
        (folder / f"{case}_0000.nii.gz").symlink_to(image.resolve())
        cases.append(case)
    return folder, cases


def _model_ready(side: str, data: prepared.Prepared, results: Path) -> Path:
    """The checkpoint file the predictor of ``side`` loads (may not exist yet)."""
    if side == harness.OURS_NAME:
        return (results / "nnUNet" / prepared.CONFIGURATION / data.task_name / f"{TRAINER}__nnUNetPlansv2.1"
                / f"fold_{prepared.FOLD}" / "model_final_checkpoint.model")
    return (results / data.task_name / f"nnUNetTrainer__nnUNetPlans__{prepared.CONFIGURATION}"
            / f"fold_{prepared.FOLD}" / "checkpoint_final.pth")


def train_cmd(side: str, args: argparse.Namespace) -> list[str]:
    """Untimed tiny-budget training of ``side`` (one epoch, ``--train-iterations`` iterations, no validation)."""
    if side == harness.OURS_NAME:
        return [harness.nnkube_bin("nnUNet_train"), prepared.CONFIGURATION, TRAINER, str(prepared.TASK_ID),
                str(prepared.FOLD), "--epochs", "1", "--iterations", str(args.train_iterations),
                "--val_iterations", "1", "--disable_validation", "--num_workers", str(args.nproc)]
    return harness.v2_launcher_cmd("train_iterations", "-d", prepared.TASK_ID, "-c", prepared.CONFIGURATION,
                                   "-f", prepared.FOLD, "-n", args.train_iterations, "--warmup", 0,
                                   "--loader-batches", 0, "--save-checkpoint", "--threads", args.threads)


def predict_cmd(side: str, in_dir: Path, out_dir: Path, tta: bool, args: argparse.Namespace) -> list[str]:
    """The timed prediction command of ``side``."""
    if side == harness.OURS_NAME:
        cmd = [harness.nnkube_bin("nnUNet_predict"), "-i", str(in_dir), "-o", str(out_dir), "-t",
               str(prepared.TASK_ID), "-m", prepared.CONFIGURATION, "-f", str(prepared.FOLD), "--step_size",
               str(STEP_SIZE), "--num_threads_preprocessing", str(args.nproc), "--num_threads_nifti_save",
               str(args.nproc)]
        return cmd + ([] if tta else ["--disable_tta"])
    cmd = harness.v2_launcher_cmd("predict", "-d", prepared.TASK_ID, "-c", prepared.CONFIGURATION,
                                  "-f", prepared.FOLD, "-i", in_dir, "-o", out_dir, "-np", args.nproc,
                                  "--step-size", STEP_SIZE, "--threads", args.threads)
    return cmd + ([] if tta else ["--disable-tta"])


def parse_log(side: str, log_path: Path, threads_default: int) -> dict[str, Any]:
    """From a timestamped prediction log: when prediction started, per-case network seconds, threads.

    ``threads_default`` is the torch thread count a process starts with (``OMP_NUM_THREADS``). nnkube picks its
    concurrency per case (one forward pass per CPU, at most one per tile x mirror), so every distinct setting
    it logged is listed.
    """
    ready, cases, threads = None, [], []
    ready_re, case_re = (_OURS_READY, _OURS_CASE) if side == harness.OURS_NAME else (_V2_READY, _V2_CASE)
    for stamp, line in harness.timestamped_lines(log_path):
        if ready is None and ready_re.search(line):
            ready = stamp
        if match := case_re.search(line):
            cases.append(float(match.group(1)))
        if side == harness.OURS_NAME and (match := _OURS_WORKERS.search(line)):
            passes = int(match.group(1))
            # nnkube's sliding window: each concurrent pass gets CPUs // passes threads; one pass keeps the default
            per_pass = harness.available_cpus() // passes if passes > 1 else threads_default
            threads.append(f"{passes} forward pass(es) at a time x {per_pass} thread(s)")
        elif side == harness.V2_NAME and (match := _V2_THREADS.search(line)):
            threads.append(f"1 forward pass at a time x {int(match.group(1))} thread(s)")
    return {"ready_s": ready, "network_s_per_case": statistics.fmean(cases) if cases else None,
            "network_cases_logged": len(cases), "threads": "; ".join(dict.fromkeys(threads)) or None}


def measure(side: str, data: prepared.Prepared, in_dir: Path, k: int, tta: bool, workdir: Path,
            args: argparse.Namespace) -> dict[str, Any]:
    """One timed prediction run of ``side`` (model trained first if absent); figures per case."""
    root = workdir / side.replace(" ", "_")
    env = prepared.with_results(side, data, root / "results", args.threads, args.nproc)
    if side == harness.OURS_NAME:
        env["NNKUBE_LOG_LEVEL"] = "DEBUG"  # for the sliding window's "(N workers)" line
    checkpoint = _model_ready(side, data, root / "results")
    if not checkpoint.is_file():
        harness.log(f"{side}: training a tiny-budget model (untimed)")
        harness.run_measured(train_cmd(side, args), env, root / "train.log")
        if not checkpoint.is_file():
            raise RuntimeError(f"{side}: training finished but left no {checkpoint}")
    out_dir = root / f"out_tta_{'on' if tta else 'off'}"
    harness.reset_dir(out_dir)
    cmd = predict_cmd(side, in_dir, out_dir, tta, args)
    log_path = workdir / f"{side.replace(' ', '_')}_tta_{'on' if tta else 'off'}.log"
    harness.log(f"{side}: TTA {'on' if tta else 'off'}: {' '.join(cmd)}")
    m = harness.run_measured(cmd, env, log_path, timestamps=True)
    harness.log(f"{side}: {m.wall_s:.1f} s wall")
    written = len(list(out_dir.glob("*.nii.gz")))
    if written != k:
        raise RuntimeError(f"{side}: wrote {written} of {k} segmentations into {out_dir} (log {log_path})")
    parsed = parse_log(side, log_path, args.threads)
    after_load = m.wall_s - parsed["ready_s"] if parsed["ready_s"] is not None else None
    return {"wall_s": m.wall_s, "cpu_s": m.cpu_s, "peak_tree_mb": m.peak_tree_mb, "cases": k,
            "s_per_case": m.wall_s / k, "s_per_case_after_load": after_load / k if after_load is not None else None,
            **parsed, "command": cmd, "log": str(log_path)}


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_mode(tta: bool, results: dict[str, dict[str, Any]], k: int, repeats: int) -> dict[str, float | None] | None:
    """Table of one TTA setting; returns the v2/ours ratios when both sides ran."""
    header = f"{'side':<12} {'wall s':>8} {'s/case':>8} {'s/case after load':>18} {'net s/case':>11}  threads"
    runs = f", median of {repeats} runs per side" if repeats > 1 else ""
    print(f"\nprediction, 3d_fullres fold 0, step {STEP_SIZE}, TTA {'on' if tta else 'off'}, {k} cases{runs}"
          f"\n{header}\n{'-' * len(header)}")
    for side, r in results.items():
        if "error" in r:
            print(f"{side:<12} FAILED (see the JSON report)")
            continue
        print(f"{side:<12} {r['wall_s']:>8.1f} {r['s_per_case']:>8.2f} {_fmt(r['s_per_case_after_load'], '.2f'):>18} "
              f"{_fmt(r['network_s_per_case'], '.2f'):>11}  {r['threads'] or 'n/a'}")
    ours, v2 = results.get(harness.OURS_NAME), results.get(harness.V2_NAME)
    if not ours or not v2 or "error" in ours or "error" in v2:
        return None
    ratios = {key: harness.ratio(v2[key], ours[key]) for key in FIGURES}
    print(f"{'v2/ours':<12} {'':>8} {_fmt(ratios['s_per_case'], '.2f'):>7}x "
          f"{_fmt(ratios['s_per_case_after_load'], '.2f'):>17}x {_fmt(ratios['network_s_per_case'], '.2f'):>10}x")
    if tta:
        print("(ratio > 1: nnkube faster; target with TTA on: >= 1.5)")
    return ratios


def run(dataset: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; return the JSON-able report (failed sides carry their error)."""
    report: dict[str, Any] = {"benchmark": "predict", "dataset": str(dataset), "cases": args.cases,
                              "nproc": args.nproc, "threads": args.threads, "step_size": STEP_SIZE,
                              "machine": harness.machine_info(), "sides": {}, "tta": {}}
    in_dir, cases = input_folder(dataset, workdir, args.cases)
    report["case_ids"] = cases
    ready = prepared.prepare_sides(args.sides, dataset, args.nproc, report)
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.tta]
    for tta in modes:
        key = "on" if tta else "off"
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in ready}
        results: dict[str, dict[str, Any]] = {}
        for rep in range(args.repeats):  # repeats alternate the sides
            for side, data in ready.items():
                if side in results:  # failed before
                    continue
                harness.log(f"{side}: TTA {key}, run {rep + 1}")
                try:
                    runs[side].append(measure(side, data, in_dir, args.cases, tta, workdir, args))
                except (RuntimeError, OSError, ValueError, KeyError) as exc:
                    harness.log(f"{side}: FAILED: {exc}")
                    results[side] = {"error": str(exc)[-3000:]}
        for side, measured in runs.items():
            if side not in results and measured:
                results[side] = harness.median_of_runs(measured, ("wall_s", *FIGURES))
        ratios = print_mode(tta, results, args.cases, args.repeats)
        report["tta"][key] = {"sides": results, "ratio_v2_over_ours": ratios}
    for side in ready:
        failed = [r[side]["error"] for r in (m["sides"] for m in report["tta"].values()) if "error" in r[side]]
        report["sides"][side] = {"error": failed[0]} if failed else {"ok": True}
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="MSD task folder (default $NNKUBE_HIPPOCAMPUS or "
                                          "../shared/datasets/Task04_Hippocampus)")
    parser.add_argument("--cases", type=int, default=10, help="test images to predict (the first K of imagesTs)")
    parser.add_argument("--tta", choices=["both", "on", "off"], default="both",
                        help="mirroring test-time augmentation settings to time (default both)")
    parser.add_argument("--nproc", type=int, default=2,
                        help="preprocessing and export processes of each predictor (also used for the one-time "
                             "preprocessing and the tiny training)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of nnU-Net v2 and OMP_NUM_THREADS of both sides (default: the CPUs "
                             "available; nnkube splits the CPUs available over concurrent forward passes itself)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed runs per side and TTA setting, alternating the sides (medians are shown)")
    parser.add_argument("--train-iterations", type=int, default=2,
                        help="iterations of the one-epoch model training when a side has no model yet")
    harness.add_common_arguments(parser, harness.BENCH_DIR / "predict",
                                 "scratch folder for inputs, models, outputs and logs (default .bench/predict)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run, print the tables; exit 1 when a side failed."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cases < 1 or args.repeats < 1 or args.nproc < 1 or args.train_iterations < 1:
        parser.error("--cases, --repeats, --nproc and --train-iterations must be at least 1")
    dataset = harness.dataset_path(args.dataset)
    if dataset is None:
        return 0
    if harness.V2_NAME in args.sides:
        harness.require_v2_venv()
    args.threads = args.threads or harness.available_cpus()
    report = run(dataset, args.workdir.resolve(), args)
    if args.json:
        harness.write_json(args.json, report)
    return 0 if all("error" not in s for s in report["sides"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
