"""The pipeline's stages as container entrypoints on S3: same results as on local disk, idempotent, resumable.

convert -> verify -> fingerprint -> plan -> preprocess (2 shards) -> train (tiny budget) -> predict run as
separate ``python -m stages`` processes against SeaweedFS, sharing nothing but the bucket, and again with a
local storage root. Training is made reproducible (``--deterministic``: epochs reseeded, augmentation
in-process; one thread per process), so the two roots must agree bit for bit: plans, preprocessed arrays,
checkpoint tensors and predictions.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from nnkube.local import Step

from stages.imageio import read_image
from tests.integration.harness import (
    MSD_TASK,
    NUM_CASES,
    NUM_TEST,
    TASK,
    TRAIN_FLAGS,
    TRAINER_DIR,
    StageRun,
    StageRunner,
    download_prefix,
    list_objects,
    pipeline_steps,
    s3_env,
    upload_folder,
    write_tiny_msd_task,
)

pytestmark = [pytest.mark.s3, pytest.mark.slow]

RUN = "run"  # the pipeline's storage root in the bucket: s3://<bucket>/run
PRE = f"preprocessed/{TASK}"
MODEL = f"results/nnUNet/3d_fullres/{TASK}/{TRAINER_DIR}"
STAGE_FOLDER = "nnUNetData_plans_v2.1_stage0"
CHANGED_CASE = "case_003"  # sorted index 3: preprocess shard 1/2, never shard 0/2


@dataclass
class Pipelines:
    """The S3 and the local run of the pipeline, and a local copy of what the S3 run wrote."""

    bucket: str
    client: object
    runner: StageRunner
    steps: list[Step]
    s3_runs: dict[str, StageRun]
    s3_copy: Path
    local_runs: dict[str, StageRun]
    local_root: Path
    msd: Path


@pytest.fixture(scope="module")
def pipelines(s3_server, tmp_path_factory) -> Pipelines:
    """Run the whole pipeline once on ``s3://<bucket>/run`` and once on a local root; copy the S3 outputs."""
    base = tmp_path_factory.mktemp("pipeline")
    msd = write_tiny_msd_task(base / "msd")
    client = s3_server.client()
    bucket = s3_server.create_bucket("pipeline")
    upload_folder(client, bucket, msd, f"msd/{MSD_TASK}")
    runner = StageRunner(base / "steps", s3_env(s3_server))
    steps = pipeline_steps(f"s3://{bucket}/msd/{MSD_TASK}", f"s3://{bucket}/{RUN}")
    s3_runs = runner.run_all(steps, "s3")
    s3_copy = download_prefix(client, bucket, f"{RUN}/", base / "s3_copy")  # before any later test changes it
    local_root = base / "local_root"
    local_runs = runner.run_all(pipeline_steps(str(msd), str(local_root)), "local")
    return Pipelines(bucket, client, runner, steps, s3_runs, s3_copy, local_runs, local_root, msd)


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _state_dict(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["network"]


def test_s3_pipeline_matches_the_local_one(pipelines: Pipelines):
    s3, local = pipelines.s3_copy, pipelines.local_root
    assert [r.status for r in pipelines.s3_runs.values() if r.result] == ["done"] * len(pipelines.s3_runs)
    # fingerprint and plans: identical documents
    for name in ("dataset_fingerprint.json", "nnUNetPlansv2.1_plans_3D.json", "nnUNetPlansv2.1_plans_2D.json"):
        assert _load_json(s3 / PRE / name) == _load_json(local / PRE / name), name
    # preprocessed cases: identical arrays and properties (but the scratch paths the raw files were read from)
    cases = sorted(p.name[:-5] for p in (local / PRE / STAGE_FOLDER).glob("*.json"))
    assert len(cases) == NUM_CASES
    assert sorted(p.name[:-5] for p in (s3 / PRE / STAGE_FOLDER).glob("*.json")) == cases
    for case in cases:
        for suffix in (".npy", "_seg.npy"):
            a, b = (np.load(root / PRE / STAGE_FOLDER / f"{case}{suffix}") for root in (s3, local))
            assert a.dtype == b.dtype and np.array_equal(a, b), f"{case}{suffix}"
        props = [_load_json(root / PRE / STAGE_FOLDER / f"{case}.json") for root in (s3, local)]
        raw = f"s3://{pipelines.bucket}/{RUN}/raw/{TASK}"  # the S3 run names the raw files by their URIs
        assert props[0].pop("list_of_data_files") == [f"{raw}/imagesTr/{case}_0000.nii.gz"]
        assert props[0].pop("seg_file") == f"{raw}/labelsTr/{case}.nii.gz"
        assert props[1].pop("list_of_data_files") == [str(local / "raw" / TASK / "imagesTr" / f"{case}_0000.nii.gz")]
        props[1].pop("seg_file")
        assert props[0] == props[1], case
    # training: the same curves and bit-identical weights
    fold_s3, fold_local = s3 / MODEL / "fold_0", local / MODEL / "fold_0"
    for name in ("model_final_checkpoint.model", "model_best.model"):
        a, b = _state_dict(fold_s3 / name), _state_dict(fold_local / name)
        assert a.keys() == b.keys()
        assert all(a[k].equal(b[k]) for k in a), f"{name}: tensors differ between the S3 and the local run"
    side_s3, side_local = (_load_json(f / "model_final_checkpoint.model.json") for f in (fold_s3, fold_local))
    assert side_s3["epoch"] == side_local["epoch"] == 1 and side_s3["config"]["deterministic"] is True
    assert side_s3["train_losses"] == side_local["train_losses"]
    dice_s3, dice_local = (runs["train"].result["extra"]["dice"] for runs in (pipelines.s3_runs,
                                                                                pipelines.local_runs))
    assert dice_s3 == dice_local
    # predictions: same labels, same geometry as the input images
    predicted = sorted(p.name for p in (local / "predictions" / TASK).glob("*.nii.gz"))
    assert predicted == [f"test_{i:03d}.nii.gz" for i in range(NUM_TEST)]
    assert sorted(p.name for p in (s3 / "predictions" / TASK).glob("*.nii.gz")) == predicted
    for name in predicted:
        (a, geo_a), (b, geo_b) = (read_image(root / "predictions" / TASK / name) for root in (s3, local))
        _, geo_in = read_image(pipelines.msd / "imagesTs" / name)
        assert not geo_a.mismatches(geo_b) and not geo_a.mismatches(geo_in), name
        assert np.array_equal(a, b), name


def _statuses(runs: dict[str, StageRun]) -> dict[str, str | None]:
    return {name: run.status for name, run in runs.items()}


def _alter_case(msd: Path, case: str, dest: Path) -> Path:
    """A copy of the case's image with brighter foreground (same geometry, same nonzero region)."""
    image = sitk.ReadImage(str(msd / "imagesTr" / f"{case}.nii.gz"))
    array = sitk.GetArrayFromImage(image)
    altered = sitk.GetImageFromArray((array * 1.25 + 7).astype(array.dtype))
    altered.CopyInformation(image)
    sitk.WriteImage(altered, str(dest))
    return dest


def test_rerun_skips_every_stage_and_a_changed_case_reruns_its_dependents(pipelines: Pipelines, tmp_path):
    client, bucket, runner, steps = pipelines.client, pipelines.bucket, pipelines.runner, pipelines.steps
    before = list_objects(client, bucket, f"{RUN}/")
    rerun = runner.run_all(steps, "rerun")
    assert _statuses(rerun) == {s.name: "skipped" for s in steps}
    for run in rerun.values():
        assert "skipped: outputs up to date" in run.stderr, run.describe()
    assert list_objects(client, bucket, f"{RUN}/") == before  # a skipped stage writes nothing

    # one training case changes in the MSD input: everything downstream of it reruns, nothing else
    altered = _alter_case(pipelines.msd, CHANGED_CASE, tmp_path / f"{CHANGED_CASE}.nii.gz")
    client.upload_file(str(altered), bucket, f"msd/{MSD_TASK}/imagesTr/{CHANGED_CASE}.nii.gz")
    changed = runner.run_all(steps, "changed")
    expected = {s.name: "done" for s in steps}
    expected["preprocess_0"] = "skipped"  # the other shard: its cases, the dataset.json and the plans are unchanged
    assert _statuses(changed) == expected
    assert "skipped: outputs up to date" in changed["preprocess_0"].stderr
    assert CHANGED_CASE in changed["preprocess_1"].result["extra"]["case_ids"]
    assert CHANGED_CASE not in changed["preprocess_0"].result["extra"]["case_ids"]
    after = list_objects(client, bucket, f"{RUN}/")
    pre = f"{RUN}/{PRE}"
    # the planner's inputs changed but its plans did not (intensities of an MRI task do not enter the plans)
    assert after[f"{pre}/nnUNetPlansv2.1_plans_3D.json"] == before[f"{pre}/nnUNetPlansv2.1_plans_3D.json"]
    assert after[f"{pre}/dataset_fingerprint.json"] != before[f"{pre}/dataset_fingerprint.json"]
    # of the preprocessed files, only the changed case's image data (and maybe its properties) differ: the
    # rerun shard rewrote its other cases byte for byte
    cases = [k for k in before if k.startswith((f"{pre}/{STAGE_FOLDER}/case_", f"{pre}/gt_segmentations/"))]
    assert len(cases) == NUM_CASES * 4 and set(cases) <= set(after)  # .npy, _seg.npy, .json, gt_segmentations
    differ = {k[len(pre) + 1:] for k in cases if after[k] != before[k]}
    assert f"{STAGE_FOLDER}/{CHANGED_CASE}.npy" in differ
    assert differ <= {f"{STAGE_FOLDER}/{CHANGED_CASE}.npy", f"{STAGE_FOLDER}/{CHANGED_CASE}.json"}


def _wait_for_object(client, bucket: str, key: str, proc, log_file: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while key not in list_objects(client, bucket, key):
        if proc.poll() is not None:
            pytest.fail(f"train exited ({proc.returncode}) before {key} appeared:\n{log_file.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"{key} did not appear within {timeout} s:\n{log_file.read_text()[-4000:]}")
        time.sleep(0.1)


def test_train_killed_with_sigkill_resumes_from_its_checkpoint_in_s3(pipelines: Pipelines, tmp_path):
    client, bucket, runner = pipelines.client, pipelines.bucket, pipelines.runner
    out = f"killed/{TRAINER_DIR}"
    step = Step("train", "train", [
        "--preprocessed", f"s3://{bucket}/{RUN}/{PRE}", "--output", f"s3://{bucket}/{out}",
        "--configuration", "3d_fullres", "--fold", "0", "--epochs", "3", "--iterations", "2", "--save-every", "1",
        "--upload-every", "0", *TRAIN_FLAGS,
    ])
    log_file = tmp_path / "killed.log"
    proc, _ = runner.start(step, "sigkill", log_file)
    _wait_for_object(client, bucket, f"{out}/fold_0/model_latest.model.json", proc, log_file)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    keys = list_objects(client, bucket, f"{out}/")
    assert not {f"{out}/fold_0/_NNKUBE_COMPLETE.json", f"{out}/fold_0/model_final_checkpoint.model"} & set(keys)

    resumed = runner.run(step, "resume")
    assert resumed.returncode == 0, resumed.describe()
    assert resumed.status == "done"
    assert f"resuming from s3://{bucket}/{out}/fold_0/model_latest.model" in resumed.stderr
    loaded = re.search(r"loaded model_latest\.model \(epoch (\d+)\)", resumed.stderr)
    assert loaded, resumed.describe()
    start_epoch = int(loaded.group(1))
    assert 1 <= start_epoch < 3
    trained = [int(e) for e in re.findall(r"epoch (\d+)/3: train loss", resumed.stderr)]
    assert trained == list(range(start_epoch + 1, 4))  # only the epochs the killed run had not finished
    state = json.loads(client.get_object(Bucket=bucket, Key=f"{out}/fold_0/model_final_checkpoint.model.json")
                       ["Body"].read())
    assert state["epoch"] == 3 and len(state["train_losses"]) == 3 and state["finished"] is True
    assert f"{out}/fold_0/_NNKUBE_COMPLETE.json" in list_objects(client, bucket, f"{out}/")


def _break_case(task: Path, how: str) -> str:
    """Damage one case of an nnU-Net task folder; returns the file that names the problem."""
    if how == "corrupt image":
        path = task / "imagesTr" / "case_001_0000.nii.gz"
        path.write_bytes(b"\x1f\x8b this is not a NIfTI file")
        return "imagesTr/case_001_0000.nii.gz"
    (task / "labelsTr" / "case_001.nii.gz").unlink()
    return "labelsTr/case_001.nii.gz"


@pytest.mark.parametrize("how", ["corrupt image", "missing label"])
def test_malformed_dataset_exits_bad_input_naming_the_case_and_writes_nothing(s3_server, tmp_path, how):
    from tests.factories import make_cases, write_nnunet_task

    task = write_nnunet_task(tmp_path / "Task006_Broken", make_cases(3, shape=(8, 10, 8)))
    bad_file = _break_case(task, how)
    client, bucket = s3_server.client(), s3_server.create_bucket("broken")
    upload_folder(client, bucket, task, "raw/Task006_Broken")
    dataset = f"s3://{bucket}/raw/Task006_Broken"
    runner = StageRunner(tmp_path / "steps", s3_env(s3_server))
    before = list_objects(client, bucket)
    steps = [
        Step("verify", "verify", ["--dataset", dataset]),
        Step("fingerprint", "fingerprint", ["--dataset", dataset, "--output",
                                            f"s3://{bucket}/pre/Task006_Broken/dataset_fingerprint.json"]),
    ]
    for step in steps:
        run = runner.run(step, how.replace(" ", "_"))
        assert run.returncode == 2, run.describe()  # bad input: no retry
        assert "case_001" in run.stdout + run.stderr and "Traceback" not in run.stderr, run.describe()
        assert run.result is None
        assert list_objects(client, bucket) == before, f"{step.name} wrote to the bucket"
    assert bad_file in run.stderr  # the fingerprint's message names the file, too
    # asked for a report, verify writes it also for a failed check (for people to read), but no marker
    report = f"reports/verify_{how.replace(' ', '_')}.json"
    run = runner.run(Step("verify", "verify", ["--dataset", dataset, "--report", f"s3://{bucket}/{report}"]), "report")
    assert run.returncode == 2, run.describe()
    assert set(list_objects(client, bucket)) == set(before) | {report}
