"""The local runner: the pipeline's stages as separate processes on one machine, sharing only storage.

Each step runs ``python -m stages <step> ...`` exactly as an Argo pod would, with URIs on the embedded default
storage (a local folder, or an ``s3://`` prefix when an S3 endpoint is configured). A step's JSON result
(``--result-json``) is read back the way Argo reads output parameters.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Step:
    """One stage invocation of a pipeline."""

    name: str
    step: str
    args: list[str] = field(default_factory=list)


@dataclass
class StepRun:
    """Outcome of one step: exit code, seconds and the stage's JSON result (if it wrote one)."""

    step: Step
    returncode: int
    seconds: float
    result: dict | None


class StepFailedError(RuntimeError):
    """A step exited non-zero; the message names it and its exit code."""


def run_step(step: Step, results_dir: Path) -> StepRun:
    """Run one step as a subprocess and collect its result JSON."""
    results_dir.mkdir(parents=True, exist_ok=True)
    result_json = results_dir / f"{step.name}.json"
    result_json.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "stages", step.step, *step.args, "--result-json", str(result_json)]
    log.info("step %s: %s", step.name, " ".join(cmd[3:]))
    start = time.monotonic()
    code = subprocess.call(cmd)
    seconds = time.monotonic() - start
    result = json.loads(result_json.read_text()) if result_json.is_file() else None
    run = StepRun(step, code, seconds, result)
    if code != 0:
        raise StepFailedError(f"step {step.name} ({step.step}) failed with exit code {code} after {seconds:.1f} s")
    log.info("step %s done in %.1f s", step.name, seconds)
    return run


def run_pipeline(steps: list[Step], results_dir: Path) -> list[StepRun]:
    """Run steps in order (each waits for the previous one, as in the Argo DAG's dependencies)."""
    return [run_step(s, results_dir) for s in steps]
