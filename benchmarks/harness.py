"""Shared helpers for the side-by-side benchmarks (nnkube vs. nnU-Net v2 on the same data, in one run).

* :func:`run_measured` runs one command as a subprocess and measures the whole process tree: wall time, CPU
  time (user+sys of the tree, from ``wait4``), the largest single-process RSS in the tree (``wait4``'s
  ``ru_maxrss``) and the peak of the tree's summed memory, polled from ``/proc`` (PSS where readable, so pages
  shared by forked workers count once, otherwise RSS). The harness makes itself a child subreaper, so
  processes that outlive their parent (a multiprocessing forkserver, the resource tracker) are re-parented to
  it and reaped here; without that their CPU time and RSS would never reach ``wait4``.
* :func:`summarize` / :func:`print_table` turn repeated measurements into min/median figures and v2/ours ratios.
* :func:`prepare_v2_raw` converts the MSD Hippocampus (``TaskXX_Name``: dataset.json, imagesTr, labelsTr) into
  nnU-Net v2's raw layout (``DatasetXXX_Name`` with ``<case>_0000.nii.gz`` symlinks and a v2 dataset.json).
* :func:`v2_env` / :func:`v2_launcher_cmd` point the reference nnU-Net v2 (own venv, see setup_nnunetv2.sh)
  at folders under ``.bench/``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / ".bench"
V2_VENV = BENCH_DIR / "nnunetv2-venv"
V2_LAUNCHER = Path(__file__).resolve().parent / "nnunetv2_launcher.py"
NNKUBE_VENV = Path(os.environ.get("NNKUBE_VENV", REPO_ROOT / ".venv"))
DEFAULT_DATASET = REPO_ROOT.parent / "shared" / "datasets" / "Task04_Hippocampus"
V2_NAME = "nnU-Net v2"
OURS_NAME = "nnkube"
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
_PR_SET_CHILD_SUBREAPER = 36
_ORPHAN_GRACE_S = 30.0


@dataclass(frozen=True)
class Measurement:
    """One timed run of one command (whole process tree)."""

    wall_s: float
    cpu_s: float
    max_proc_rss_mb: float
    peak_tree_mb: float
    returncode: int


def log(message: str) -> None:
    """Progress line on stderr (stdout carries the report)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def dataset_path(cli_value: str | None) -> Path | None:
    """The MSD Hippocampus folder: ``--dataset``, else $NNKUBE_HIPPOCAMPUS, else ../shared/datasets/...

    Returns None (after saying why) when the folder is absent, so a benchmark can skip cleanly.
    """
    raw = cli_value or os.environ.get("NNKUBE_HIPPOCAMPUS") or str(DEFAULT_DATASET)
    path = Path(raw).expanduser().resolve()
    if not (path / "dataset.json").is_file():
        log(f"SKIP: no MSD dataset at {path} (pass --dataset or set NNKUBE_HIPPOCAMPUS)")
        return None
    return path


def require_v2_venv() -> Path:
    """Python of the nnU-Net v2 venv; exits with a hint when setup_nnunetv2.sh has not been run."""
    python = V2_VENV / "bin" / "python"
    if not python.exists():
        sys.exit(f"no nnU-Net v2 venv at {V2_VENV}: run benchmarks/setup_nnunetv2.sh first")
    return python


def v2_env(root: Path) -> dict[str, str]:
    """Environment for nnU-Net v2 with its three folders under ``root`` (created)."""
    env = dict(os.environ)
    for var, sub in (("nnUNet_raw", "nnUNet_raw"), ("nnUNet_preprocessed", "nnUNet_preprocessed"),
                     ("nnUNet_results", "nnUNet_results")):
        folder = root / sub
        folder.mkdir(parents=True, exist_ok=True)
        env[var] = str(folder)
    env.pop("VIRTUAL_ENV", None)
    return env


def nnkube_env(root: Path) -> dict[str, str]:
    """Environment for nnkube's v1-compatible commands with their three folders under ``root`` (created)."""
    env = dict(os.environ)
    for var, sub in (("nnUNet_raw_data_base", "raw"), ("nnUNet_preprocessed", "preprocessed"),
                     ("RESULTS_FOLDER", "results")):
        folder = root / sub
        folder.mkdir(parents=True, exist_ok=True)
        env[var] = str(folder)
    return env


def v2_launcher_cmd(*args: str | int | float) -> list[str]:
    """Command running ``nnunetv2_launcher.py`` with ``args`` in the nnU-Net v2 venv."""
    return [str(require_v2_venv()), str(V2_LAUNCHER), *map(str, args)]


def nnkube_bin(name: str) -> str:
    """Path of an nnkube console script (``nnUNet_plan_and_preprocess`` ...) in the nnkube venv."""
    return str(NNKUBE_VENV / "bin" / name)


def _msd_training_cases(msd_dir: Path) -> list[tuple[str, Path, Path]]:
    meta = json.loads((msd_dir / "dataset.json").read_text())
    cases = []
    for entry in meta["training"]:
        image = (msd_dir / entry["image"]).resolve()
        label = (msd_dir / entry["label"]).resolve()
        for path in (image, label):
            if not path.is_file():
                raise FileNotFoundError(f"{msd_dir / 'dataset.json'} lists {path}, which does not exist")
        cases.append((image.name.removesuffix(".nii.gz"), image, label))
    return cases


def _symlink(target: Path, link: Path) -> None:
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    link.unlink(missing_ok=True)
    link.symlink_to(target)


def prepare_v2_raw(msd_dir: Path, raw_root: Path, dataset_id: int = 4) -> Path:
    """Lay out an MSD single-modality task as nnU-Net v2 raw data under ``raw_root``; return the folder.

    Images and labels are symlinks to the MSD files (nothing is copied). Idempotent.
    """
    meta = json.loads((msd_dir / "dataset.json").read_text())
    modalities = meta["modality"]
    if len(modalities) != 1:
        raise ValueError(f"{msd_dir}: only single-modality MSD tasks are supported here, got {modalities}")
    name = msd_dir.name.split("_", 1)[1]
    target = raw_root / f"Dataset{dataset_id:03d}_{name}"
    cases = _msd_training_cases(msd_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    for case, image, label in cases:
        _symlink(image, target / "imagesTr" / f"{case}_0000.nii.gz")
        _symlink(label, target / "labelsTr" / f"{case}.nii.gz")
    for entry in meta.get("test", []):
        image = (msd_dir / entry).resolve()
        if image.is_file():
            _symlink(image, target / "imagesTs" / f"{image.name.removesuffix('.nii.gz')}_0000.nii.gz")
    v2_meta = {
        "name": meta.get("name", name),
        "channel_names": {"0": modalities["0"]},
        "labels": {label_name: int(value) for value, label_name in meta["labels"].items()},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (target / "dataset.json").write_text(json.dumps(v2_meta, indent=2))
    return target


class _TreeMemorySampler(threading.Thread):
    """Polls /proc for the summed memory of all descendants of this process; keeps the peak (KiB).

    Descendants of the harness, not of the command, so that re-parented orphans still count. Reading
    ``smaps_rollup`` of a process with a large address space (torch) costs the kernel real time, so the sampler
    keeps its own share of one CPU under ``max_duty`` (a pause of at least ``(1 - d) / d`` times the last sample's
    cost): on a long training run it would otherwise take ~20 % of a core away from the command it measures.
    """

    def __init__(self, interval_s: float = 0.2, max_duty: float = 0.03) -> None:
        super().__init__(daemon=True)
        self.root_pid = os.getpid()
        self.interval_s = interval_s
        self.max_duty = max_duty
        self.peak_kb = 0
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def run(self) -> None:
        while not self._stop_event.is_set():
            started = time.perf_counter()
            pids = [pid for pid in _descendants(self.root_pid) if pid != self.root_pid]
            self.peak_kb = max(self.peak_kb, sum(_memory_kb(pid) for pid in pids))
            cost = time.perf_counter() - started
            self._stop_event.wait(max(self.interval_s, cost * (1 - self.max_duty) / self.max_duty))


def _descendants(root_pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root_pid]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _memory_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log(f"warning: prctl(PR_SET_CHILD_SUBREAPER) failed (errno {ctypes.get_errno()}); "
            "CPU time of orphaned worker processes will be missing")


def _reap_orphans() -> tuple[float, int]:
    """Wait for re-parented leftovers of the last command; return their CPU seconds and max RSS (KiB)."""
    cpu, maxrss_kb = 0.0, 0
    deadline = time.monotonic() + _ORPHAN_GRACE_S
    while True:
        try:
            pid, _, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return cpu, maxrss_kb
        if pid == 0:
            if time.monotonic() > deadline:
                log(f"warning: processes left by the command still run after {_ORPHAN_GRACE_S:.0f} s")
                return cpu, maxrss_kb
            time.sleep(0.05)
            continue
        cpu += usage.ru_utime + usage.ru_stime
        maxrss_kb = max(maxrss_kb, usage.ru_maxrss)


def run_measured(cmd: Sequence[str], env: Mapping[str, str] | None = None, log_path: Path | None = None,
                 cwd: Path | None = None, timestamps: bool = False) -> Measurement:
    """Run ``cmd`` to completion and measure its process tree; output goes to ``log_path`` (or is dropped).

    With ``timestamps`` every output line is written as ``<seconds since start> <line>`` (see
    :func:`timestamped_lines`), so that a benchmark can tell when a phase began; set ``PYTHONUNBUFFERED=1`` in
    ``env`` so that a Python command's prints are not held back in its buffers.

    Raises:
        RuntimeError: the command exited non-zero (the message carries the end of its output).
    """
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    _become_subreaper()
    stamper: threading.Thread | None = None
    try:
        sampler = _TreeMemorySampler()
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=dict(env) if env is not None else None, cwd=cwd,
                                stdout=subprocess.PIPE if timestamps else out, stderr=subprocess.STDOUT)
        if timestamps:
            stamper = threading.Thread(target=_copy_stamped, args=(proc.stdout, out, started), daemon=True)
            stamper.start()
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        orphan_cpu, orphan_maxrss_kb = _reap_orphans()
        sampler.stop()
        if stamper is not None:
            stamper.join()
            proc.stdout.close()  # type: ignore[union-attr]
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log_path is not None:
            out.close()  # type: ignore[union-attr]
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:] if log_path is not None else ""
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; log {log_path}:\n{tail}")
    return Measurement(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime + orphan_cpu,
                       max_proc_rss_mb=max(usage.ru_maxrss, orphan_maxrss_kb) / 1024,
                       peak_tree_mb=sampler.peak_kb / 1024, returncode=proc.returncode)


def _copy_stamped(stream: Any, out: Any, started: float) -> None:
    """Copy ``stream`` line by line to ``out`` (a binary file or DEVNULL), each line prefixed with its time."""
    for line in iter(stream.readline, b""):
        if out is not subprocess.DEVNULL:
            out.write(f"{time.perf_counter() - started:.3f} ".encode() + line)
            out.flush()


def timestamped_lines(log_path: Path) -> list[tuple[float, str]]:
    """``(seconds since the command started, line)`` for each line of a log written with ``timestamps``."""
    lines = []
    for raw in log_path.read_text(errors="replace").splitlines():
        stamp, _, text = raw.partition(" ")
        try:
            lines.append((float(stamp), text))
        except ValueError:  # a line without a stamp (cannot happen unless the log was written otherwise)
            lines.append((float("nan"), raw))
    return lines


def result_line(log_path: Path, prefix: str = "RESULT ") -> dict[str, Any]:
    """The JSON object of the last ``RESULT {json}`` line of a log (timestamped or not).

    Raises:
        RuntimeError: the log has no such line.
    """
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        at = line.find(prefix)
        if at >= 0:
            return json.loads(line[at + len(prefix):])
    raise RuntimeError(f"{log_path}: no {prefix.strip()} line")


def available_cpus() -> int:
    """CPUs this process may use: nnkube's own rule (affinity and cgroup quota), else the affinity mask."""
    try:
        from stages.resources import available_cpus as nnkube_available_cpus
    except ImportError:
        return len(os.sched_getaffinity(0))
    return nnkube_available_cpus()


def side_env(base: Mapping[str, str], **overrides: str | int | Path) -> dict[str, str]:
    """Copy of ``base`` with ``overrides`` (stringified) and ``PYTHONUNBUFFERED=1`` for timely log lines."""
    env = dict(base)
    env.update({key: str(value) for key, value in overrides.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def median_of_runs(runs: Sequence[Mapping[str, Any]], keys: Iterable[str]) -> dict[str, Any]:
    """Merge repeated runs of one side: the last run's fields, the median of each of ``keys``, and ``runs``.

    A key that is missing (None) in some runs takes the median of the others (None when all lack it).
    """
    merged: dict[str, Any] = {**runs[-1], "repeats": len(runs), "runs": [dict(r) for r in runs]}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        merged[key] = statistics.median(values) if values else None
    return merged


def iteration_timings(setup_s: float, iterations: int, step_s: Sequence[float], loader_batches: int,
                      loader_s: float) -> dict[str, Any]:
    """The timing keys of a training-iterations RESULT line, the same on both sides (probe and v2 launcher)."""
    return {
        "setup_s": setup_s,
        "iterations": iterations,
        "seconds_per_iteration_median": statistics.median(step_s) if step_s else None,
        "seconds_per_iteration_mean": statistics.fmean(step_s) if step_s else None,
        "loader_batches": loader_batches,
        "loader_batches_per_s": loader_batches / loader_s if loader_s > 0 else None,
    }


def add_common_arguments(parser: argparse.ArgumentParser, workdir: Path, workdir_help: str) -> None:
    """``--sides``, ``--workdir`` (default ``workdir``) and ``--json``, shared by the side-by-side benchmarks."""
    parser.add_argument("--sides", nargs="+", type=side_name, default=[OURS_NAME, V2_NAME],
                        help="sides to run, in this order: nnkube and/or v2 (default both)")
    parser.add_argument("--workdir", type=Path, default=workdir, help=workdir_help)
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")


def side_name(text: str) -> str:
    """A side given on the command line: ``nnkube`` or ``v2`` (or the full name ``nnU-Net v2``)."""
    names = {"nnkube": OURS_NAME, "ours": OURS_NAME, "v2": V2_NAME, V2_NAME.lower(): V2_NAME}
    try:
        return names[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown side {text!r}: use nnkube or v2") from None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def reset_dir(path: Path) -> None:
    """Remove ``path`` (if present) so that a timed run starts from nothing."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def summarize(runs: Iterable[Measurement]) -> dict[str, Any]:
    """Min and median of each figure over repeated runs (plus the raw runs)."""
    runs = list(runs)
    out: dict[str, Any] = {"repeats": len(runs), "runs": [asdict(r) for r in runs]}
    for key in ("wall_s", "cpu_s", "max_proc_rss_mb", "peak_tree_mb"):
        values = [getattr(r, key) for r in runs]
        out[f"{key}_min"] = min(values)
        out[f"{key}_median"] = statistics.median(values)
    return out


def ratios(v2: Mapping[str, Any], ours: Mapping[str, Any]) -> dict[str, float | None]:
    """v2 / ours for the median figures: > 1 means nnkube is faster or leaner."""
    out: dict[str, float | None] = {}
    for key in ("wall_s_median", "wall_s_min", "cpu_s_median", "peak_tree_mb_median", "max_proc_rss_mb_median"):
        out[key] = v2[key] / ours[key] if ours.get(key) else None
    return out


def print_table(title: str, results: Mapping[str, Mapping[str, Any] | None]) -> None:
    """Print one row per side (median, min wall) and, when both sides ran, the v2/ours ratio row."""
    header = f"{'side':<12} {'wall med s':>11} {'wall min s':>11} {'cpu med s':>10} {'tree peak MB':>13} " \
             f"{'max proc MB':>12} {'runs':>5}"
    print(f"\n{title}\n{header}\n{'-' * len(header)}")
    for side, summary in results.items():
        if summary is None:
            print(f"{side:<12} {'(not run)':>11}")
            continue
        print(f"{side:<12} {summary['wall_s_median']:>11.2f} {summary['wall_s_min']:>11.2f} "
              f"{summary['cpu_s_median']:>10.2f} {summary['peak_tree_mb_median']:>13.0f} "
              f"{summary['max_proc_rss_mb_median']:>12.0f} {summary['repeats']:>5}")
    v2, ours = results.get(V2_NAME), results.get(OURS_NAME)
    if v2 is not None and ours is not None:
        r = ratios(v2, ours)
        print(f"{'v2/ours':<12} {r['wall_s_median']:>10.2f}x {r['wall_s_min']:>10.2f}x {r['cpu_s_median']:>9.2f}x "
              f"{r['peak_tree_mb_median']:>12.2f}x {r['max_proc_rss_mb_median']:>11.2f}x")
        print("(ratio > 1: nnkube faster / uses less memory)")


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write the benchmark's JSON report atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (they are only comparable within one run)."""
    load = os.getloadavg()
    return {"host": os.uname().nodename, "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)), "loadavg_at_start": [round(v, 2) for v in load],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
