"""The benchmarks' own plumbing: timestamped logs, RESULT lines, log parsing, medians over repeated runs.

The benchmarks themselves need the nnU-Net v2 venv and minutes of CPU; these tests cover the parts that decide
what the benchmarks report, without either.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # the benchmark scripts import each other as top-level modules
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    return _load("harness")


@pytest.fixture(scope="module")
def bench_predict() -> ModuleType:
    return _load("bench_predict")


def _run_measured_in_child(code: str, log: Path) -> subprocess.CompletedProcess:
    """Call ``harness.run_measured(python -c code, timestamps=True)`` in a child process.

    The harness makes its process a child subreaper that waits for every descendant: not something to do to
    the test runner, which may have other children (servers of other tests).
    """
    driver = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import harness; "
        "m = harness.run_measured([sys.executable, '-c', sys.argv[3]], harness.side_env({}), "
        "harness.Path(sys.argv[2]), timestamps=True); print(json.dumps({'wall_s': m.wall_s}))"
    )
    return subprocess.run([sys.executable, "-c", driver, str(BENCHMARKS), str(log), code], capture_output=True,
                          text=True, timeout=120, check=False)


def test_timestamped_run_stamps_lines_in_order_and_finds_result(harness: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "cmd.log"
    code = "import time; print('first'); time.sleep(0.3); print('RESULT {\"x\": 1}'); print('last')"
    done = _run_measured_in_child(code, log)
    assert done.returncode == 0, done.stderr
    wall_s = json.loads(done.stdout)["wall_s"]
    lines = harness.timestamped_lines(log)
    assert [text for _, text in lines] == ["first", 'RESULT {"x": 1}', "last"]
    stamps = [t for t, _ in lines]
    assert stamps == sorted(stamps)
    assert stamps[1] - stamps[0] >= 0.25  # the sleep shows between the two lines
    assert stamps[-1] <= wall_s
    assert harness.result_line(log) == {"x": 1}


def test_result_line_missing_raises(harness: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "cmd.log"
    log.write_text("no result here\n")
    with pytest.raises(RuntimeError, match="no RESULT line"):
        harness.result_line(log)


def test_failed_timestamped_run_reports_output(tmp_path: Path) -> None:
    done = _run_measured_in_child("import sys; print('boom'); sys.exit(3)", tmp_path / "x.log")
    assert done.returncode != 0
    assert "exited 3" in done.stderr
    assert "boom" in done.stderr


def test_median_of_runs_skips_missing_values(harness: ModuleType) -> None:
    runs = [{"a": 1.0, "b": None, "tag": "r1"}, {"a": 5.0, "b": 2.0, "tag": "r2"}, {"a": 3.0, "b": 4.0, "tag": "r3"}]
    merged = harness.median_of_runs(runs, ["a", "b"])
    assert merged["a"] == 3.0
    assert merged["b"] == 3.0
    assert merged["tag"] == "r3"
    assert merged["repeats"] == 3
    assert [r["tag"] for r in merged["runs"]] == ["r1", "r2", "r3"]


def test_side_names(harness: ModuleType) -> None:
    assert harness.side_name("v2") == harness.V2_NAME
    assert harness.side_name("nnU-Net v2") == harness.V2_NAME
    assert harness.side_name("nnkube") == harness.OURS_NAME
    with pytest.raises(argparse.ArgumentTypeError, match="unknown side"):
        harness.side_name("v1")


def test_ratio_handles_missing(harness: ModuleType) -> None:
    assert harness.ratio(3.0, 1.5) == 2.0
    assert harness.ratio(None, 1.0) is None
    assert harness.ratio(1.0, 0.0) is None


def _stamped(tmp_path: Path, lines: list[tuple[float, str]]) -> Path:
    log = tmp_path / "predict.log"
    log.write_text("".join(f"{t:.3f} {text}\n" for t, text in lines))
    return log


def test_parse_nnkube_prediction_log(bench_predict: ModuleType, harness: ModuleType, tmp_path: Path) -> None:
    log = _stamped(tmp_path, [
        (2.0, "12:00:00 INFO stages.predict.predictor: model foo: 3d_fullres"),
        (2.5, "12:00:00 INFO stages.predict.predictor: predicting 2 case(s) of /in into /out (shard 0/1)"),
        (2.6, "12:00:00 DEBUG stages.predict.sliding_window: sliding window: 1 tiles x 8 mirrors in 8 batches of 1 "
              "on cpu (2 workers)"),
        (4.0, "12:00:02 INFO stages.predict.predictor: predicted 1/2: case_a (36, 50, 35) in 1.4 s"),
        (4.1, "12:00:02 DEBUG stages.predict.sliding_window: sliding window: 1 tiles x 8 mirrors in 8 batches of 1 "
              "on cpu (2 workers)"),
        (5.0, "12:00:03 INFO stages.predict.predictor: predicted 2/2: case_b (36, 50, 35) in 0.8 s"),
    ])
    parsed = bench_predict.parse_log(harness.OURS_NAME, log, 4)
    assert parsed["ready_s"] == 2.5
    assert parsed["network_s_per_case"] == pytest.approx(1.1)
    assert parsed["network_cases_logged"] == 2
    per_pass = harness.available_cpus() // 2
    assert parsed["threads"] == f"2 forward pass(es) at a time x {per_pass} thread(s)"


def test_parse_v2_prediction_log(bench_predict: ModuleType, harness: ModuleType, tmp_path: Path) -> None:
    log = _stamped(tmp_path, [
        (1.0, "some banner"),
        (3.25, "PHASE load 1.84s maxrss_self=630MB"),
        (3.3, "THREADS 2"),
        (6.0, "CASE_SECONDS 2.0000"),
        (9.0, "CASE_SECONDS 3.0000"),
    ])
    parsed = bench_predict.parse_log(harness.V2_NAME, log, 2)
    assert parsed["ready_s"] == 3.25
    assert parsed["network_s_per_case"] == pytest.approx(2.5)
    assert parsed["threads"] == "1 forward pass at a time x 2 thread(s)"


def test_input_folder_links_first_k_test_images(bench_predict: ModuleType, tmp_path: Path) -> None:
    dataset = tmp_path / "Task04_Hippocampus"
    (dataset / "imagesTs").mkdir(parents=True)
    for name in ("case_3", "case_1", "case_2"):
        (dataset / "imagesTs" / f"{name}.nii.gz").write_bytes(b"x")
    folder, cases = bench_predict.input_folder(dataset, tmp_path / "work", 2)
    assert cases == ["case_1", "case_2"]
    assert sorted(p.name for p in folder.iterdir()) == ["case_1_0000.nii.gz", "case_2_0000.nii.gz"]
    assert (folder / "case_1_0000.nii.gz").resolve() == (dataset / "imagesTs" / "case_1.nii.gz").resolve()
    with pytest.raises(ValueError, match="fewer than --cases 4"):
        bench_predict.input_folder(dataset, tmp_path / "work", 4)


@pytest.fixture(scope="module")
def bench_train() -> ModuleType:
    return _load("bench_train")


def _full_run_args(bench_train, *argv: str) -> argparse.Namespace:
    return bench_train._parser().parse_args(["--full-run", *argv])


def test_full_run_merges_an_earlier_side_of_the_same_budget(bench_train, tmp_path, capsys):
    earlier = tmp_path / "ours.json"
    ours = {"wall_s": 6000.0, "cpu_s": 11000.0, "foreground_mean_dice": 0.85,
            "command": ["nnUNet_train", "3d_fullres", "nnUNetTrainerV2", "4", "0", "--epochs", "10",
                        "--iterations", "50", "--val_iterations", "50", "--num_workers", "2"]}
    earlier.write_text(json.dumps({"benchmark": "train_full_run", "machine": {"time": "T0"},
                                   "sides": {"nnkube": ours}}))  # written before reports kept "budget"
    args = _full_run_args(bench_train, "--full-epochs", "10", "--full-iterations", "50")
    report = {"budget": bench_train.full_run_budget(args),
              "sides": {"nnU-Net v2": {"wall_s": 7500.0, "cpu_s": 12000.0, "foreground_mean_dice": 0.83}}}
    assert bench_train.merge_earlier_full_run(report, earlier) == ["nnkube"]
    assert report["sides"]["nnkube"]["merged_from"] == str(earlier)
    assert report["sides"]["nnkube"]["machine"] == {"time": "T0"}
    bench_train.print_full_runs(report["sides"], report, args)
    out = capsys.readouterr().out
    assert "earlier invocation, T0" in out and "wall ours/v2: 0.80x" in out and "Dice ours - v2: +0.0200" in out

    assert bench_train.merge_earlier_full_run(report, earlier) == []  # a side measured here is never replaced
    other = _full_run_args(bench_train, "--full-epochs", "5", "--full-iterations", "50")
    with pytest.raises(ValueError, match="budget"):
        bench_train.merge_earlier_full_run({"budget": bench_train.full_run_budget(other), "sides": {}}, earlier)
    earlier.write_text(json.dumps({"benchmark": "train_iterations", "sides": {}}))
    with pytest.raises(ValueError, match="not a --full-run report"):
        bench_train.merge_earlier_full_run(report, earlier)
