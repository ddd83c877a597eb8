"""Helpers of the end-to-end tests: stage processes that share nothing but storage, bucket access, a tiny task.

Every stage runs as ``python -m stages <step> ... --result-json <file>`` (the command line of the local runner
and of an Argo pod) in a fresh working folder of its own, which is also its scratch (``NNKUBE_SCRATCH_DIR``) and
``TMPDIR``: the stages of a pipeline see each other only through the storage root they are given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from nnkube.demo import demo_steps
from nnkube.local import Step

from tests.factories import dataset_json, make_case, make_cases, write_msd_task

MSD_TASK = "Task05_Synth"
TASK = "Task005_Synth"
TRAINER_DIR = "nnUNetTrainerV2__nnUNetPlansv2.1"
CASE_SHAPE = (20, 24, 20)
NUM_CASES = 8
NUM_TEST = 2
SHARDS = 2
EPOCHS = 1
ITERATIONS = 2
#: Reproducible training (reseeded epochs, in-process augmentation) and a short per-epoch validation.
TRAIN_FLAGS = ["--deterministic", "--num-workers", "0", "--val-iterations", "1"]
#: One thread and no worker processes anywhere: results must not depend on scheduling, and the machine is small.
QUIET_ENV = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "0",
    "NNKUBE_EXPORT_WORKERS": "0",
}
_DROPPED = ("AWS_", "NNKUBE_", "nnUNet_", "RESULTS_FOLDER")


@dataclass
class StageRun:
    """One finished stage process."""

    step: Step
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    result: dict | None

    @property
    def status(self) -> str | None:
        """``done`` / ``skipped`` from the stage result (None when the stage wrote none)."""
        return (self.result or {}).get("status")

    def describe(self) -> str:
        """The command and the tail of its output, for failure messages."""
        return (f"{self.step.name}: python -m stages {self.step.step} {' '.join(self.step.args)} -> "
                f"{self.returncode}\n--- stdout\n{self.stdout[-2000:]}\n--- stderr\n{self.stderr[-6000:]}")


class StageRunner:
    """Runs stages as subprocesses, each in its own empty folder under ``work``.

    Args:
        work: Parent of the per-step folders.
        env: Extra environment (e.g. the ``AWS_*`` variables of the S3 server); the caller's ``AWS_*``,
            ``NNKUBE_*`` and nnU-Net variables are never inherited.
    """

    def __init__(self, work: Path, env: dict[str, str] | None = None) -> None:
        self.work = Path(work)
        base = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED)}
        self.env = {**base, **QUIET_ENV, **(env or {})}
        self._count = 0

    def start(self, step: Step, label: str, log_file: Path | None = None) -> tuple[subprocess.Popen, Path]:
        """Start ``step`` in the background; returns the process and its folder (output to ``log_file``)."""
        self._count += 1
        folder = self.work / f"{self._count:03d}-{label}-{step.name}"
        (folder / "tmp").mkdir(parents=True)
        env = {**self.env, "NNKUBE_SCRATCH_DIR": str(folder / "scratch"), "TMPDIR": str(folder / "tmp")}
        cmd = [sys.executable, "-m", "stages", step.step, *step.args, "--result-json", str(folder / "result.json")]
        out = open(log_file, "wb") if log_file else subprocess.PIPE  # noqa: SIM115 - closed when the child exits
        return subprocess.Popen(cmd, cwd=folder, env=env, stdout=out, stderr=out), folder

    def run(self, step: Step, label: str, timeout: float = 600) -> StageRun:
        """Run ``step`` to completion and collect its output and stage result."""
        start = time.monotonic()
        proc, folder = self.start(step, label)
        stdout, stderr = proc.communicate(timeout=timeout)
        result_file = folder / "result.json"
        result = json.loads(result_file.read_text()) if result_file.is_file() else None
        return StageRun(step, proc.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace"),
                        time.monotonic() - start, result)

    def run_all(self, steps: list[Step], label: str) -> dict[str, StageRun]:
        """Run ``steps`` in order; stop at (and raise on) the first failure, with its output."""
        runs = {}
        for step in steps:
            run = self.run(step, label)
            if run.returncode != 0:
                raise AssertionError(f"{label}: stage failed\n{run.describe()}")
            runs[step.name] = run
        return runs


def pipeline_steps(dataset: str, root: str) -> list[Step]:
    """The demo pipeline for ``dataset`` under ``root``, preprocessing in :data:`SHARDS` shards, tiny training."""
    steps: list[Step] = []
    for step in demo_steps(dataset, root, EPOCHS, ITERATIONS):
        if step.step == "preprocess":
            steps += [Step(f"preprocess_{i}", step.step, [*step.args, "--shard", f"{i}/{SHARDS}"])
                      for i in range(SHARDS)]
        elif step.step == "train":
            steps.append(Step(step.name, step.step, [*step.args, *TRAIN_FLAGS]))
        else:
            steps.append(step)
    return steps


def write_tiny_msd_task(parent: Path) -> Path:
    """An MSD task ``Task05_Synth`` of :data:`NUM_CASES` labelled cases and :data:`NUM_TEST` test images."""
    cases = make_cases(NUM_CASES, shape=CASE_SHAPE)
    root = write_msd_task(parent / MSD_TASK, cases)
    tests = [make_case(f"test_{i:03d}", shape=CASE_SHAPE, seed=100 + i) for i in range(NUM_TEST)]
    (root / "imagesTs").mkdir()
    for case in tests:
        write_volume(case.images[0], case.spacing, root / "imagesTs" / f"{case.case_id}.nii.gz")
    doc = dataset_json(cases, test_ids=[c.case_id for c in tests])
    (root / "dataset.json").write_text(json.dumps(doc, indent=2))
    return root


def write_volume(array: np.ndarray, spacing_zyx, path: Path) -> None:
    """Write a (z, y, x) array with the given spacing as a NIfTI file."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


# ---------------------------------------------------------------------------------------------- bucket access
def upload_folder(client, bucket: str, folder: Path, prefix: str) -> None:
    """Upload every file below ``folder`` to ``<prefix>/<relative path>``."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


def list_objects(client, bucket: str, prefix: str = "") -> dict[str, str]:
    """``{key: etag}`` of every object under ``prefix``."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = obj["ETag"]
    return found


def download_prefix(client, bucket: str, prefix: str, dest: Path) -> Path:
    """Download every object under ``prefix`` into ``dest`` (relative keys kept)."""
    for key in list_objects(client, bucket, prefix):
        target = dest / key[len(prefix):].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))
    return dest


def s3_env(server) -> dict[str, str]:
    """The ``AWS_*`` variables that point a stage process at ``server``."""
    return {
        "AWS_ENDPOINT_URL": server.endpoint_url, "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key, "AWS_DEFAULT_REGION": server.region,
    }
