"""The SDK installs without the runtime: its CLI modules must not import torch, numpy or SimpleITK."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "numpy", "SimpleITK", "scipy", "batchgenerators")


@pytest.mark.parametrize(
    "module",
    ["nnkube.cli", "nnkube.nnunet_compat", "nnkube.nnunet_compat.train", "nnkube.nnunet_compat.plan_and_preprocess",
     "stages.__main__"],
)
def test_cli_modules_import_no_runtime(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"{module} imports {out} at module level"


def test_stage_help_lists_every_step():
    out = subprocess.run([sys.executable, "-m", "stages", "--help"], capture_output=True, text=True, check=True).stdout
    from stages.__main__ import STEPS

    for name in STEPS:
        assert f"  {name} " in out


@pytest.mark.parametrize("step", ["convert", "verify", "fingerprint", "plan", "preprocess", "train", "validate",
                                  "predict", "evaluate", "postprocess", "select", "ensemble", "list-cases"])
def test_every_step_has_help(step):
    res = subprocess.run([sys.executable, "-m", "stages", step, "--help"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "--result-json" in res.stdout or "Commands" in res.stdout
