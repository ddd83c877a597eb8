"""The stage CLIs on stagekit: per-shard skipping on S3, raw prefix protection, exit codes, JSON logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from stages import storage
from stages.__main__ import main
from stages.stagekit import StageResult
from tests.factories import make_case, make_cases, write_msd_task, write_nnunet_task
from tests.preprocess.conftest import make_plans
from tests.s3server import free_ports
from tests.stagekit.conftest import WRITE_OPERATIONS, object_versions

REPO = Path(__file__).resolve().parents[2]
SHAPE = (12, 14, 12)


def _preprocess(dataset: str, plans: str, out: str, shard: str, result: str) -> list[str]:
    return ["preprocess", "--dataset", dataset, "--plans", plans, "--configuration", "3d_fullres", "--output", out,
            "--num-processes", "1", "--shard", shard, "--result-json", result]


@pytest.mark.s3
def test_preprocess_shards_skip_and_rerun_on_s3(tmp_path, s3_bucket, s3_server, s3_calls, capsys):
    raw = write_nnunet_task(tmp_path / "Task500_Synth", make_cases(4, shape=SHAPE))
    dataset = f"{s3_bucket}/raw/Task500_Synth"
    storage.upload_tree(raw, dataset)
    plans = f"{s3_bucket}/pre/plans.json"
    storage.write_text(plans, make_plans().to_json())
    out = f"{s3_bucket}/pre/Task500_Synth"
    results = [str(tmp_path / f"r{i}.json") for i in range(2)]
    for i in range(2):
        assert main(_preprocess(dataset, plans, out, f"{i}/2", results[i])) == 0
    assert [StageResult.load(r).extra["case_ids"] for r in results] == [["case_000", "case_002"],
                                                                         ["case_001", "case_003"]]
    capsys.readouterr()
    before = object_versions(s3_server, out)
    time.sleep(1.1)  # LastModified has a resolution of one second
    s3_calls.clear()
    for i in range(2):
        assert main(_preprocess(dataset, plans, out, f"{i}/2", results[i])) == 0
        assert StageResult.load(results[i]).status == "skipped"
    assert capsys.readouterr().err.count("skipped: outputs up to date") == 2
    assert not [c for c in s3_calls if c in WRITE_OPERATIONS]
    assert object_versions(s3_server, out) == before

    # one input case changes: only the shard holding it reruns
    changed = make_case("case_003", shape=SHAPE, seed=99)
    image = sitk.GetImageFromArray(changed.images[0])
    sitk.WriteImage(image, str(tmp_path / "case_003_0000.nii.gz"))
    storage.upload_file(tmp_path / "case_003_0000.nii.gz", f"{dataset}/imagesTr/case_003_0000.nii.gz")
    for i in range(2):
        assert main(_preprocess(dataset, plans, out, f"{i}/2", results[i])) == 0
    assert [StageResult.load(r).status for r in results] == ["skipped", "done"]
    after = object_versions(s3_server, out)
    rewritten = sorted(k.rsplit("/", 1)[1] for k in after if after[k] != before.get(k))
    assert "case_003.npy" in rewritten and not [n for n in rewritten if n.startswith(("case_000", "case_002"))]
    assert "_NNKUBE_COMPLETE.preprocess.nnUNetData_plans_v2.1_stage0.shard-1-of-2.json" in rewritten
    assert not [k for k in after if "/raw/" in k]  # nothing was ever written under the raw prefix


def test_fingerprint_and_plan_skip_when_unchanged(tmp_path, capsys):
    raw = write_nnunet_task(tmp_path / "Task501_Cli", make_cases(2, shape=SHAPE))
    fp = str(tmp_path / "pre" / "fingerprint.json")
    result = str(tmp_path / "r.json")
    fp_args = ["fingerprint", "--dataset", str(raw), "--output", fp, "--num-processes", "1", "--result-json", result]
    assert main(fp_args) == 0 and StageResult.load(result).status == "done"
    plan_args = ["plan", "--fingerprint", fp, "--output", str(tmp_path / "pre"), "--result-json", result]
    assert main(plan_args) == 0
    planned = StageResult.load(result)
    assert planned.status == "done" and planned.extra["configurations"] == ["2d", "3d_fullres"]
    assert main(fp_args) == 0 and StageResult.load(result).status == "skipped"
    assert main(plan_args) == 0
    again = StageResult.load(result)
    assert again.status == "skipped" and again.extra == planned.extra
    # a label edited in the raw data: fingerprint and then plan run again
    label = raw / "labelsTr" / "case_001.nii.gz"
    image = sitk.ReadImage(str(label))
    array = sitk.GetArrayFromImage(image)
    array[array == 2] = 1
    edited = sitk.GetImageFromArray(array)
    edited.CopyInformation(image)
    sitk.WriteImage(edited, str(label))
    assert main(fp_args) == 0 and StageResult.load(result).status == "done"
    capsys.readouterr()


def test_convert_skips_an_unchanged_input_and_reruns_a_changed_one(tmp_path, capsys):
    msd = write_msd_task(tmp_path / "Task09_Tiny", make_cases(2, "tiny", shape=SHAPE))
    args = ["convert", "--input", str(msd), "--output", str(tmp_path / "raw"),
            "--result-json", str(tmp_path / "r.json")]
    assert main(args) == 0 and StageResult.load(tmp_path / "r.json").status == "done"
    assert main(args) == 0 and StageResult.load(tmp_path / "r.json").status == "skipped"
    assert main(args + ["--task-id", "10"]) == 0  # another parameter, another task folder
    assert StageResult.load(tmp_path / "r.json").extra["task"] == "Task010_Tiny"
    dataset_json = msd / "dataset.json"
    dataset_json.write_text(dataset_json.read_text().replace('"name"', '"name" ', 1))
    assert main(args + ["--overwrite"]) == 0 and StageResult.load(tmp_path / "r.json").status == "done"
    lines = capsys.readouterr().out.splitlines()
    assert lines == [str(tmp_path / "raw" / "Task009_Tiny")] * 2 + [str(tmp_path / "raw" / "Task010_Tiny"),
                                                                  str(tmp_path / "raw" / "Task009_Tiny")]


def test_stage_refuses_to_write_its_raw_dataset(tmp_path, monkeypatch, capsys):
    raw = write_nnunet_task(tmp_path / "Task502_Raw", make_cases(2, shape=SHAPE))
    before = sorted(p.relative_to(raw) for p in raw.rglob("*"))
    assert main(["fingerprint", "--dataset", str(raw), "--output", str(raw / "fingerprint.json")]) == 2
    assert "raw-data prefix" in capsys.readouterr().err
    monkeypatch.setenv("NNKUBE_RAW_PREFIX", str(tmp_path))
    assert main(["fingerprint", "--dataset", str(raw), "--output", str(tmp_path / "elsewhere" / "fp.json")]) == 2
    assert main(["fingerprint", "--dataset", str(raw), "--output", str(tmp_path / "fp.json"),
                 "--raw-prefix", str(raw)]) == 0  # the flag replaces the environment variable
    assert sorted(p.relative_to(raw) for p in raw.rglob("*")) == before


def _run_stage_process(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-m", "stages", *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env=full_env)


def test_exit_codes_through_python_m_stages(tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    (folder / "a_0000.nii.gz").write_bytes(b"x")
    (folder / "b_0001.nii.gz").write_bytes(b"x")
    bad = _run_stage_process(["list-cases", "--input", str(folder), "--num-shards", "2",
                              "--output", str(tmp_path / "shards.json")])
    assert bad.returncode == 2, bad.stderr
    assert "case a: missing modality 0001" in bad.stderr and "Traceback" not in bad.stderr

    dead = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there: connection refused
    transient = _run_stage_process(
        ["list-cases", "--input", "s3://bucket/incoming", "--num-shards", "2", "--output", str(tmp_path / "s.json")],
        AWS_ENDPOINT_URL=dead, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", AWS_DEFAULT_REGION="us-east-1",
    )
    assert transient.returncode == 75, transient.stderr
    assert "failed after 5 attempts" in transient.stderr and "Traceback" not in transient.stderr


def test_json_logs_carry_the_stage_context(tmp_path):
    raw = write_nnunet_task(tmp_path / "Task503_Logs", make_cases(2, shape=SHAPE))
    plans = tmp_path / "plans.json"
    plans.write_text(make_plans().to_json())
    proc = _run_stage_process(_preprocess(str(raw), str(plans), str(tmp_path / "pre"), "0/1",
                                          str(tmp_path / "r.json")), NNKUBE_LOG_FORMAT="json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    done = [r for r in records if r["msg"].startswith("done in")]
    assert len(done) == 1
    started = [r for r in records if r["msg"].startswith("started:")]
    assert len(started) == 1 and records.index(started[0]) < records.index(done[0])
    assert "outputs under" in started[0]["msg"] and str(tmp_path / "pre") in started[0]["msg"]
    assert {k: done[0][k] for k in ("stage", "dataset", "configuration")} == {
        "stage": "preprocess", "dataset": "Task503_Logs", "configuration": "3d_fullres"}
    assert all(r["stage"] == "preprocess" for r in records)
