"""Training benchmark: nnkube vs. nnU-Net v2 on the MSD Hippocampus 3d_fullres plans, side by side in one run.

Default mode, per-iteration figures (both sides: patch 40x56x40, batch 7, each side's default augmentation,
the same torch thread count and the same number of augmentation worker processes, CPU):

* nnkube: ``benchmarks/nnkube_train_probe.py`` in the nnkube venv (the pieces ``nnUNet_train`` trains with);
* nnU-Net v2: ``nnunetv2_launcher.py train_iterations`` (``nnUNetTrainer``) in its own venv.

Each times ``--warmup`` untimed then ``--iterations`` timed training iterations (forward, backward, step) and,
after draining the prefetch buffers, ``--loader-batches`` batches of the training data loader alone. Reported:
seconds per iteration (median) and loader batches/s per side, and the ratios ours/v2.

``--full-run`` instead trains a fold for ``--full-epochs`` x ``--full-iterations`` on each side
(``nnUNet_train 3d_fullres nnUNetTrainerV2 4 0 --epochs E --iterations I``; v2: ``nnUNetTrainer`` with
``num_epochs``/``num_iterations_per_epoch`` overridden) including the final validation, and reports wall time and
the validation's mean foreground Dice of each. The acceptance run is E=10, I=50: about 110 min per side on a
2-CPU machine (~11 s per iteration on both sides), so both sides together outlast a working session there;
``--merge REPORT`` then shows a side measured by an earlier invocation (same budget, same machine) in the table.

The preprocessed data are made once under ``.bench/data`` (untimed, see prepared.py).

    python benchmarks/bench_train.py --iterations 10 --workers 2 --json .bench/train.json
    python benchmarks/bench_train.py --full-run --full-epochs 10 --full-iterations 50 --json .bench/train_full.json
    python benchmarks/bench_train.py --full-run --sides v2 --merge benchmarks/results/train_full_nnkube.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import harness
import prepared

PROBE = Path(__file__).resolve().parent / "nnkube_train_probe.py"
TRAINER = "nnUNetTrainerV2"
ITERATION_FIGURES = ("seconds_per_iteration_median", "seconds_per_iteration_mean", "loader_batches_per_s")


def iteration_cmd(side: str, data: prepared.Prepared, scratch: Path, args: argparse.Namespace) -> list[str]:
    """Command timing the training iterations and the loader of ``side``."""
    if side == harness.OURS_NAME:
        return [str(harness.NNKUBE_VENV / "bin" / "python"), str(PROBE), "--preprocessed", str(data.task_dir),
                "--output", str(scratch / "probe_fold"), "-c", prepared.CONFIGURATION, "-f", str(prepared.FOLD),
                "-n", str(args.iterations), "--warmup", str(args.warmup), "--loader-batches",
                str(args.loader_batches), "--workers", str(args.workers), "--threads", str(args.threads)]
    return harness.v2_launcher_cmd("train_iterations", "-d", prepared.TASK_ID, "-c", prepared.CONFIGURATION,
                                   "-f", prepared.FOLD, "-n", args.iterations, "--warmup", args.warmup,
                                   "--loader-batches", args.loader_batches, "--threads", args.threads)


def full_run_cmd(side: str, args: argparse.Namespace) -> list[str]:
    """Command of a whole short training run of ``side``, final validation included."""
    if side == harness.OURS_NAME:
        return [harness.nnkube_bin("nnUNet_train"), prepared.CONFIGURATION, TRAINER, str(prepared.TASK_ID),
                str(prepared.FOLD), "--epochs", str(args.full_epochs), "--iterations", str(args.full_iterations),
                "--val_iterations", str(args.full_val_iterations), "--num_workers", str(args.workers)]
    return harness.v2_launcher_cmd("train", "-d", prepared.TASK_ID, "-c", prepared.CONFIGURATION,
                                   "-f", prepared.FOLD, "--epochs", args.full_epochs, "--iterations",
                                   args.full_iterations, "--val-iterations", args.full_val_iterations,
                                   "--threads", args.threads)


def nnkube_fold_dir(results: Path, data: prepared.Prepared) -> Path:
    """Our fold folder under a results folder (``nnUNet/<cfg>/<task>/<trainer>__<plans>/fold_<f>``)."""
    return (results / "nnUNet" / prepared.CONFIGURATION / data.task_name / f"{TRAINER}__nnUNetPlansv2.1"
            / f"fold_{prepared.FOLD}")


def nnkube_validation_dice(fold_dir: Path) -> float:
    """Mean foreground Dice of our final validation: ``validation_raw/summary.json`` results.mean.mean.Dice."""
    summary = json.loads((fold_dir / "validation_raw" / "summary.json").read_text())
    return float(summary["results"]["mean"]["mean"]["Dice"])


def _run_side(side: str, cmd: list[str], env: dict[str, str], log_path: Path) -> dict[str, Any]:
    harness.log(f"{side}: {' '.join(cmd)}")
    m = harness.run_measured(cmd, env, log_path)
    harness.log(f"{side}: {m.wall_s:.1f} s wall")
    return {"wall_s": m.wall_s, "cpu_s": m.cpu_s, "peak_tree_mb": m.peak_tree_mb, "command": cmd,
            "log": str(log_path)}


def measure_iterations(side: str, data: prepared.Prepared, workdir: Path, args: argparse.Namespace) -> dict:
    """Run the iteration benchmark of one side once; its RESULT figures plus the process's wall time."""
    scratch = workdir / side.replace(" ", "_")
    harness.reset_dir(scratch)
    env = prepared.with_results(side, data, scratch / "results", args.threads, args.workers)
    log_path = workdir / f"{side.replace(' ', '_')}.log"
    process = _run_side(side, iteration_cmd(side, data, scratch, args), env, log_path)
    return {**harness.result_line(log_path), "process": process}


def measure_full_run(side: str, data: prepared.Prepared, workdir: Path, args: argparse.Namespace) -> dict:
    """Train and validate one fold on one side; wall time and final validation Dice."""
    scratch = workdir / "full" / side.replace(" ", "_")
    harness.reset_dir(scratch)
    env = prepared.with_results(side, data, scratch / "results", args.threads, args.workers)
    log_path = workdir / f"full_{side.replace(' ', '_')}.log"
    process = _run_side(side, full_run_cmd(side, args), env, log_path)
    if side == harness.OURS_NAME:
        fold_dir = nnkube_fold_dir(scratch / "results", data)
        return {**process, "foreground_mean_dice": nnkube_validation_dice(fold_dir),
                "summary": str(fold_dir / "validation_raw" / "summary.json")}
    result = harness.result_line(log_path)
    return {**process, **result}


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_iterations(results: dict[str, dict], report: dict[str, Any], repeats: int) -> None:
    """Table of the per-iteration figures and the ours/v2 ratios (stored in ``report``)."""
    header = f"{'side':<12} {'s/iter med':>11} {'s/iter mean':>12} {'loader b/s':>11} {'batch':>6} " \
             f"{'patch':>12} {'threads':>8} {'DA procs':>9}"
    runs = f", median of {repeats} runs per side" if repeats > 1 else ""
    print(f"\ntraining iterations, 3d_fullres, CPU{runs}\n{header}\n{'-' * len(header)}")
    for side, r in results.items():
        if "error" in r:
            print(f"{side:<12} FAILED (see the JSON report)")
            continue
        patch = "x".join(str(v) for v in r["patch_size"])
        print(f"{side:<12} {_fmt(r['seconds_per_iteration_median'], '.3f'):>11} "
              f"{_fmt(r['seconds_per_iteration_mean'], '.3f'):>12} {_fmt(r['loader_batches_per_s'], '.2f'):>11} "
              f"{r['batch_size']:>6} {patch:>12} {r['torch_threads']:>8} {r['n_proc_da']:>9}")
    ours, v2 = results.get(harness.OURS_NAME, {}), results.get(harness.V2_NAME, {})
    if "error" in ours or "error" in v2 or not ours or not v2:
        return
    ratios = {
        "seconds_per_iteration_ours_over_v2": harness.ratio(ours["seconds_per_iteration_median"],
                                                            v2["seconds_per_iteration_median"]),
        "loader_batches_per_s_ours_over_v2": harness.ratio(ours["loader_batches_per_s"], v2["loader_batches_per_s"]),
    }
    report["ratios"] = ratios
    print(f"s/iteration ours/v2:    {_fmt(ratios['seconds_per_iteration_ours_over_v2'], '.2f')}x "
          "(target <= 1.0: nnkube no slower)")
    print(f"loader batches/s ours/v2: {_fmt(ratios['loader_batches_per_s_ours_over_v2'], '.2f')}x "
          "(> 1: nnkube's loader faster)")
    if (ours["patch_size"], ours["batch_size"]) != (v2["patch_size"], v2["batch_size"]):
        print("WARNING: the sides train different patch/batch sizes; the ratios compare different work")


def print_full_runs(results: dict[str, dict], report: dict[str, Any], args: argparse.Namespace) -> None:
    """Table of the full runs (wall time, final validation Dice) and the ours/v2 wall ratio."""
    header = f"{'side':<12} {'wall s':>9} {'cpu s':>9} {'fg Dice':>8}"
    print(f"\nfull training run, {args.full_epochs} epochs x {args.full_iterations} iterations + final validation"
          f"\n{header}\n{'-' * len(header)}")
    for side, r in results.items():
        if "error" in r:
            print(f"{side:<12} FAILED (see the JSON report)")
            continue
        origin = f"  (earlier invocation, {r['machine'].get('time')}: {r['merged_from']})" if "merged_from" in r else ""
        print(f"{side:<12} {r['wall_s']:>9.1f} {r['cpu_s']:>9.1f} {r['foreground_mean_dice']:>8.4f}{origin}")
    ours, v2 = results.get(harness.OURS_NAME, {}), results.get(harness.V2_NAME, {})
    if ours and v2 and "error" not in ours and "error" not in v2:
        report["ratios"] = {"wall_s_ours_over_v2": harness.ratio(ours["wall_s"], v2["wall_s"]),
                            "dice_ours_minus_v2": ours["foreground_mean_dice"] - v2["foreground_mean_dice"]}
        print(f"wall ours/v2: {report['ratios']['wall_s_ours_over_v2']:.2f}x; "
              f"Dice ours - v2: {report['ratios']['dice_ours_minus_v2']:+.4f}")


def full_run_budget(args: argparse.Namespace) -> dict[str, int]:
    """The training budget of a full run (what must match for two sides to be compared)."""
    return {"epochs": args.full_epochs, "iterations": args.full_iterations, "val_iterations": args.full_val_iterations}


def _budget_of(report: dict[str, Any]) -> dict[str, int] | None:
    """A full-run report's budget: its ``budget``, else read off its sides' commands (reports before it was kept)."""
    if "budget" in report:
        return report["budget"]
    flags = {"--epochs": "epochs", "--iterations": "iterations", "--val_iterations": "val_iterations",
             "--val-iterations": "val_iterations"}
    for side in report.get("sides", {}).values():
        command = [str(c) for c in side.get("command", [])]
        found = {flags[c]: int(command[i + 1]) for i, c in enumerate(command[:-1]) if c in flags}
        if len(found) == 3:
            return found
    return None


def merge_earlier_full_run(report: dict[str, Any], path: Path) -> list[str]:
    """Add the sides of an earlier ``--full-run`` report that this run did not measure; return their names.

    A full run of both sides at the acceptance budget outlasts a working session on a 2-CPU machine, so the sides
    may be measured in separate invocations on the same machine. The merged sides keep their own ``machine``
    record (time, load at start) and name the report they came from; the table says so.

    Raises:
        ValueError: ``path`` is not a full-run report, or its budget differs from this run's.
    """
    earlier = json.loads(Path(path).read_text())
    if earlier.get("benchmark") != "train_full_run":
        raise ValueError(f"{path} is not a --full-run report (benchmark {earlier.get('benchmark')!r})")
    if _budget_of(earlier) != report["budget"]:
        raise ValueError(f"{path} was run with budget {_budget_of(earlier)}, this run with {report['budget']}")
    merged = []
    for side, result in earlier.get("sides", {}).items():
        if side in report["sides"] or "error" in result:
            continue
        report["sides"][side] = {**result, "merged_from": str(path), "machine": earlier.get("machine")}
        merged.append(side)
    return merged


def run(dataset: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark (iterations or full run); return the JSON-able report (failed sides carry the error)."""
    report: dict[str, Any] = {
        "benchmark": "train_full_run" if args.full_run else "train_iterations", "dataset": str(dataset),
        "threads": args.threads, "workers": args.workers, "machine": harness.machine_info(), "sides": {},
    }
    measure = measure_full_run if args.full_run else measure_iterations
    ready = prepared.prepare_sides(args.sides, dataset, args.nproc, report)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in ready}
    for rep in range(1 if args.full_run else args.repeats):  # repeats alternate the sides
        for side, data in ready.items():
            if "error" in report["sides"].get(side, {}):
                continue
            harness.log(f"{side}: run {rep + 1}")
            try:
                runs[side].append(measure(side, data, workdir, args))
            except (RuntimeError, OSError, ValueError, KeyError) as exc:
                harness.log(f"{side}: FAILED: {exc}")
                report["sides"][side] = {"error": str(exc)[-3000:]}
    for side, measured in runs.items():
        if measured and "error" not in report["sides"].get(side, {}):
            report["sides"][side] = harness.median_of_runs(measured, ITERATION_FIGURES) if not args.full_run \
                else measured[0]
    if args.full_run:
        report["budget"] = full_run_budget(args)
        for path in args.merge or []:
            for side in merge_earlier_full_run(report, path):
                harness.log(f"{side}: taken from {path} (measured {report['sides'][side]['machine'].get('time')})")
        print_full_runs(report["sides"], report, args)
    else:
        print_iterations(report["sides"], report, args.repeats)
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="MSD task folder (default $NNKUBE_HIPPOCAMPUS or "
                                          "../shared/datasets/Task04_Hippocampus)")
    parser.add_argument("--iterations", type=int, default=10, help="timed training iterations per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training iterations first")
    parser.add_argument("--loader-batches", type=int, default=20,
                        help="batches drawn from the training loader alone (after draining its buffers)")
    parser.add_argument("--workers", type=int, default=None,
                        help="augmentation worker processes, the same on both sides (default: the CPUs available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads, the same on both sides (default: the CPUs available)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per side, alternating the sides; the table shows the medians over the runs")
    parser.add_argument("--nproc", type=int, default=2, help="processes for the one-time preprocessing")
    parser.add_argument("--full-run", action="store_true",
                        help="instead of timing iterations, train and validate a fold on each side")
    parser.add_argument("--full-epochs", type=int, default=10, help="--full-run: epochs")
    parser.add_argument("--full-iterations", type=int, default=50, help="--full-run: training iterations per epoch")
    parser.add_argument("--full-val-iterations", type=int, default=50,
                        help="--full-run: validation batches per epoch (both trainers' default is 50)")
    parser.add_argument("--merge", type=Path, action="append",
                        help="--full-run: also show the sides of an earlier --full-run JSON report (same budget) that "
                             "this run does not measure, e.g. one side per session; may be repeated")
    harness.add_common_arguments(parser, harness.BENCH_DIR / "train",
                                 "scratch folder for logs and results (default .bench/train)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run, print the table; exit 1 when a side failed."""
    parser = _parser()
    args = parser.parse_args(argv)
    if min(args.iterations, args.repeats, args.full_epochs, args.full_iterations) < 1 or args.warmup < 0:
        parser.error("--iterations, --repeats, --full-epochs and --full-iterations must be at least 1")
    if args.merge and not args.full_run:
        parser.error("--merge goes with --full-run")
    for path in args.merge or []:  # checked before hours of training, not after
        try:
            merge_earlier_full_run({"budget": full_run_budget(args), "sides": {}}, path)
        except (OSError, ValueError) as exc:
            parser.error(f"--merge {path}: {exc}")
    dataset = harness.dataset_path(args.dataset)
    if dataset is None:
        return 0
    if harness.V2_NAME in args.sides:
        harness.require_v2_venv()
    cpus = harness.available_cpus()
    args.threads = args.threads or cpus
    args.workers = cpus if args.workers is None else args.workers
    report = run(dataset, args.workdir.resolve(), args)
    if args.json:
        harness.write_json(args.json, report)
    return 0 if all("error" not in s for s in report["sides"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
