"""The CPU image builds with podman (images/build.sh) and runs the stages against SeaweedFS on the host.

Skipped where podman is not installed or cannot run. The first build on a machine takes minutes (debootstrap
base, wheelhouse, image); later builds reuse the cached base, wheels and layers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from stages import storage
from stages.__main__ import STEPS
from stages.errors import EXIT_BAD_INPUT
from stages.fingerprint.models import Fingerprint
from tests.factories import make_cases, write_nnunet_task

pytestmark = [pytest.mark.images, pytest.mark.slow, pytest.mark.s3]

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
TAG = "localhost/nnkube-stages:test-cpu"
BASE = "localhost/nnkube-base:bookworm"
UID = 65532
MAX_SIZE_BYTES = 2_500_000_000  # torch + SimpleITK + scipy stack is ~1.5 GB; far above means something leaked in


def podman_env() -> dict[str, str]:
    """The environment for podman: runc and lowered ulimits from images/containers.conf."""
    return {**os.environ, "CONTAINERS_CONF": str(IMAGES / "containers.conf")}


def podman(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``podman args``; with ``check`` a non-zero exit fails the test with podman's output."""
    result = subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def why_podman_unusable() -> str | None:
    """Why the image cannot be built here (a skip reason), or None when it can."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman buildah runc ...; see images/README.md)"
    info = subprocess.run(["podman", "info"], env=podman_env(), capture_output=True, text=True, timeout=120)
    if info.returncode != 0:
        return f"podman cannot run here: {info.stderr.strip()[-300:]}"
    exists = subprocess.run(["podman", "image", "exists", BASE], env=podman_env(), timeout=60)
    if exists.returncode != 0 and os.geteuid() != 0:
        return f"base image {BASE} missing and debootstrap needs root (run images/make-base.sh as root)"
    return None


@pytest.fixture(scope="module")
def cpu_image(request) -> str:
    """Build the CPU image with images/build.sh (reusing what is cached) and return its tag."""
    reason = why_podman_unusable()
    if reason:
        pytest.skip(reason)
    start = time.monotonic()
    build = subprocess.run(
        ["bash", str(IMAGES / "build.sh"), "--target", "cpu", "--tag", TAG],
        env=podman_env(), capture_output=True, text=True, timeout=1800, check=False,
    )
    seconds = time.monotonic() - start
    assert build.returncode == 0, f"images/build.sh failed:\n{build.stdout}\n{build.stderr[-6000:]}"
    assert build.stdout.strip().splitlines()[-1] == TAG
    size = int(podman("image", "inspect", "--format", "{{.Size}}", TAG).stdout)
    message = f"[images] built {TAG} in {seconds:.0f} s; image size {size / 1e6:.0f} MB"
    _announce(request, message)
    return TAG


def test_image_configuration(cpu_image):
    config = json.loads(podman("image", "inspect", cpu_image).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["python", "-m", "stages"]
    assert config["Cmd"] == ["--help"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["WorkingDir"] == "/work"
    env = dict(item.split("=", 1) for item in config["Env"])
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        assert env[name] == "1"
    assert env["NNKUBE_LOG_FORMAT"] == "json"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONFAULTHANDLER"] == "1"  # a native crash prints the Python stacks to the pod's log
    size = int(podman("image", "inspect", "--format", "{{.Size}}", cpu_image).stdout)
    assert size < MAX_SIZE_BYTES, f"image is {size / 1e6:.0f} MB"


def test_image_runs_as_non_root_without_build_tools(cpu_image):
    script = (
        "id -u; python -c 'import torch; print(torch.__version__)'; "
        "for tool in pip pip3 gcc cc make; do command -v $tool && echo found $tool; done; "
        "ls /wheels 2>/dev/null && echo found wheels; "
        "touch /work/probe && echo work writable; touch /opt/venv/probe 2>/dev/null && echo venv writable; true"
    )
    out = podman("run", "--rm", "--entrypoint", "sh", cpu_image, "-c", script).stdout.splitlines()
    assert out[0] == str(UID)
    assert out[1].endswith("+cpu"), out[1]
    assert "work writable" in out
    assert not [line for line in out if line.startswith("found") or line == "venv writable"], out


def test_help_lists_every_step(cpu_image):
    default = podman("run", "--rm", cpu_image)  # CMD is --help
    listed = [line.split()[0] for line in default.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(STEPS)
    step_help = podman("run", "--rm", cpu_image, "fingerprint", "--help")
    assert "--dataset" in step_help.stdout and "--output" in step_help.stdout


def _announce(request, message: str) -> None:
    """Print ``message`` in pytest's output (also when the test passes), e.g. a CI log."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + message)


def _run_stage(request, image: str, server, *args: str) -> subprocess.CompletedProcess:
    """Run ``python -m stages args`` in the image, on the host's network so 127.0.0.1 is the S3 server.

    A container killed by a signal (exit status above 128, e.g. 139 for SIGSEGV) is reported with its output, which
    carries the Python stacks of every thread (the image sets PYTHONFAULTHANDLER), and run once more: a second
    death fails the test with both outputs; a pass the second time stays visible in pytest's output.
    """
    credentials = {
        "AWS_ENDPOINT_URL": server.endpoint_url,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": server.region,
    }
    env_args = [arg for name, value in credentials.items() for arg in ("--env", f"{name}={value}")]
    command = ("run", "--rm", "--network", "host", *env_args, image, *args)
    first = podman(*command, check=False)
    if first.returncode <= 128:
        return first
    signal = first.returncode - 128
    report = f"exit {first.returncode} (signal {signal})\n{first.stdout[-2000:]}\n{first.stderr[-6000:]}"
    _announce(request, f"[images] WARNING: `{' '.join(args)}` died in the container: {report}")
    second = podman(*command, check=False)
    if second.returncode > 128:
        pytest.fail(f"`{' '.join(args)}` died in the container twice:\nfirst: {report}\n"
                    f"second: exit {second.returncode}\n{second.stdout[-2000:]}\n{second.stderr[-6000:]}")
    return second


def test_stages_run_in_the_image_against_s3(request, cpu_image, s3_server, s3_bucket, tmp_path):
    cases = make_cases(4, prefix="synth", shape=(20, 24, 20), zero_border=2)
    task = write_nnunet_task(tmp_path / "Task500_Synth", cases)
    clean, broken = f"{s3_bucket}/raw/Task500_Synth", f"{s3_bucket}/raw/Task501_Broken"
    storage.upload_tree(task, clean, progress=False)
    storage.upload_tree(task, broken, progress=False)
    storage.delete(f"{broken}/labelsTr/synth_002.nii.gz")

    verified = _run_stage(request, cpu_image, s3_server, "verify", "--dataset", clean)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    failed = _run_stage(request, cpu_image, s3_server, "verify", "--dataset", broken)
    assert failed.returncode == EXIT_BAD_INPUT, failed.stdout + failed.stderr
    assert "synth_002" in failed.stdout
    logged = [json.loads(line) for line in failed.stderr.splitlines() if line.startswith("{")]
    assert any(rec["level"] == "ERROR" and "failed verification" in rec["msg"] for rec in logged), failed.stderr

    output = f"{s3_bucket}/fingerprint/fingerprint.json"
    ran = _run_stage(request, cpu_image, s3_server, "fingerprint", "--dataset", clean, "--output", output)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    fingerprint = Fingerprint.from_json(storage.read_text(output))
    assert sorted(case.case_id for case in fingerprint.cases) == [case.case_id for case in cases]
    assert fingerprint.all_classes == [1, 2]
    assert fingerprint.modalities == {0: "MRI"}
    inner = tuple(s - 4 for s in (20, 24, 20))  # zero_border=2 on every side is cropped away
    assert all(tuple(case.shape_after_crop) == inner for case in fingerprint.cases)
