"""The dataset driver and the stage CLI: parallel, idempotent, clear about dead workers and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages.__main__ import main as stages_main
from stages.errors import BadInputError, DatasetError
from stages.preprocess.models import properties_file
from stages.preprocess.preprocessor import (
    GT_FOLDER,
    PreprocessParams,
    is_case_complete,
    load_case,
    preprocess_dataset,
)
from stages.workers import CRASH_CASE_ENV, WorkerDiedError
from tests.factories import make_cases, write_msd_task, write_nnunet_task
from tests.preprocess.conftest import make_plans

SHAPE = (20, 24, 20)


@pytest.fixture
def task(tmp_path):
    return write_nnunet_task(tmp_path / "Task500_Synth", make_cases(4, shape=SHAPE, zero_border=2))


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_preprocess_dataset_parallel_then_idempotent(task, tmp_path):
    plans = make_plans(spacing=(1.0, 1.0, 1.0), extra_stages=[(1.6, 1.6, 1.6)])
    out = tmp_path / "pre"
    ids = preprocess_dataset(task, plans, [0, 1], out, num_processes=2)
    assert ids == [f"case_{i:03d}" for i in range(4)]
    for stage in (0, 1):
        folder = out / plans.stage_folder(stage)
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            f"{c}{ext}" for c in ids for ext in (".json", ".npy", "_seg.npy"))
    assert sorted(p.name for p in (out / GT_FOLDER).iterdir()) == [f"{c}.nii.gz" for c in ids]
    low = load_case(out / plans.stage_folder(0), "case_000")[0]
    full = load_case(out / plans.stage_folder(1), "case_000")[0]
    assert low.shape[1:] == tuple(round(s / 1.6) for s in full.shape[1:])

    before = _mtimes(out / plans.stage_folder(1))
    assert preprocess_dataset(task, plans, [1], out, num_processes=2) == ids
    assert _mtimes(out / plans.stage_folder(1)) == before  # nothing rewritten

    # an incomplete case (properties missing) and a case made with other parameters are redone
    (out / plans.stage_folder(1) / properties_file("case_001")).unlink()
    changed = make_plans(spacing=(1.0, 1.0, 1.0), extra_stages=[(1.6, 1.6, 1.6)], use_mask={0: True})
    preprocess_dataset(task, changed, [1], out, num_processes=1, case_ids=["case_001", "case_002"])
    digest = PreprocessParams.from_plans(changed, 1).digest()
    folder = out / plans.stage_folder(1)
    assert is_case_complete(folder, "case_001", digest) and is_case_complete(folder, "case_002", digest)
    assert not is_case_complete(folder, "case_000", digest)  # not asked for: left as it was
    assert _mtimes(folder)["case_000.npy"] == before["case_000.npy"]


def test_dead_worker_is_reported_by_case(task, tmp_path, monkeypatch):
    monkeypatch.setenv(CRASH_CASE_ENV, "case_002")
    with pytest.raises(WorkerDiedError, match=r"while processing case case_002 \(killed"):
        preprocess_dataset(task, make_plans(), [0], tmp_path / "pre", num_processes=2)
    folder = tmp_path / "pre" / make_plans().stage_folder(0)
    assert not (folder / "case_002.json").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no marker or temp files left


def test_case_errors_name_the_case_and_file(task, tmp_path):
    bad = task / "imagesTr" / "case_001_0000.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(BadInputError, match="case_001_0000.nii.gz"):
        preprocess_dataset(task, make_plans(), [0], tmp_path / "pre", num_processes=2)
    bad.unlink()
    with pytest.raises(DatasetError, match="case case_001: missing image"):
        preprocess_dataset(task, make_plans(), [0], tmp_path / "pre", num_processes=2)


def test_cli_on_msd_layout_with_shard_and_result(tmp_path):
    cases = make_cases(3, shape=SHAPE, spacing=(1.0, 1.0, 3.5))
    raw = write_msd_task(tmp_path / "Task04_Synth", cases)
    plans = make_plans(spacing=(2.5, 0.8, 0.8), transpose_forward=(2, 0, 1))
    plans.save(tmp_path / "plans.json")
    out, result = tmp_path / "pre", tmp_path / "result.json"
    code = stages_main(["preprocess", "--dataset", str(raw), "--plans", str(tmp_path / "plans.json"),
                        "--configuration", "3d_fullres", "--output", str(out), "--num-processes", "1",
                        "--shard", "1/2", "--result-json", str(result)])
    assert code == 0
    doc = json.loads(result.read_text())["extra"]
    assert doc["case_ids"] == ["case_001"] and doc["stage"] == 0 and doc["shard"] == "1/2"
    data, seg, props = load_case(out / plans.stage_folder(0), "case_001")
    assert props.spacing_after_resampling == [2.5, 0.8, 0.8]
    assert data.shape[1:] == seg.shape[1:] and data.shape[1] == round(20 * 3.5 / 2.5)
    assert set(np.unique(seg)) == {0, 1, 2}
    assert [p.name for p in (out / GT_FOLDER).iterdir()] == ["case_001.nii.gz"]

    # a configuration the plans lack and a malformed shard are input errors (exit 2)
    assert stages_main(["preprocess", "--dataset", str(raw), "--plans", str(tmp_path / "plans.json"),
                        "--configuration", "3d_lowres", "--output", str(out)]) == 2
    assert stages_main(["preprocess", "--dataset", str(raw), "--plans", str(tmp_path / "plans.json"),
                        "--configuration", "3d_fullres", "--output", str(out), "--shard", "2/2"]) == 2


@pytest.mark.s3
def test_cli_reads_and_writes_s3(tmp_path, s3_bucket):
    from stages import storage

    raw = write_nnunet_task(tmp_path / "Task500_Synth", make_cases(4, shape=SHAPE, zero_border=2))
    storage.upload_tree(raw, storage.join(s3_bucket, "datasets/Task500_Synth"))
    plans = make_plans()
    storage.write_text(storage.join(s3_bucket, "plans.json"), plans.to_json())
    out = storage.join(s3_bucket, "preprocessed/Task500_Synth")
    result = storage.join(s3_bucket, "results/preprocess-0.json")
    code = stages_main(["preprocess", "--dataset", storage.join(s3_bucket, "datasets/Task500_Synth"),
                        "--plans", storage.join(s3_bucket, "plans.json"), "--configuration", "3d_fullres",
                        "--output", out, "--num-processes", "2", "--shard", "0/2", "--result-json", result])
    assert code == 0
    assert json.loads(storage.read_text(result))["extra"]["case_ids"] == ["case_000", "case_002"]
    names = [u[len(out) + 1:] for u in storage.list_prefix(out)]
    folder = plans.stage_folder(0)
    assert sorted(names) == sorted(
        [f"_NNKUBE_COMPLETE.preprocess.{folder}.shard-0-of-2.json"]
        + [f"{GT_FOLDER}/case_000.nii.gz", f"{GT_FOLDER}/case_002.nii.gz"]
        + [f"{folder}/{c}{ext}" for c in ("case_000", "case_002") for ext in (".json", ".npy", "_seg.npy")])
    storage.download_tree(out, tmp_path / "back")
    data, seg, props = load_case(tmp_path / "back" / folder, "case_002")
    assert props.case_id == "case_002" and data.shape[1:] == seg.shape[1:]
