"""Command lines: ``python -m stages verify|convert``, ``nnkube dataset verify|convert``,
``nnUNet_convert_decathlon_task``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nnkube.cli import app as nnkube_app
from nnkube.nnunet_compat import convert as compat_convert
from typer.testing import CliRunner

from stages.__main__ import main as stages_main
from stages.dataset.convert import ConversionResult
from stages.dataset.verify import VerificationReport
from stages.stagekit import StageResult
from tests.dataset.corpus import DEFECTS, write_base
from tests.factories import make_cases, write_msd_task

MISSING_LINE = "PROBLEM case_001: imagesTr/case_001_0000.nii.gz: image of modality 0 missing"
NAN_LINE = "PROBLEM case_001: imagesTr/case_001_0000.nii.gz: contains non-finite values (2 NaN, 0 Inf voxels)"


# the dispatcher installs a handler on the (captured) stderr of the test; put the old ones back
pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture
def clean(tmp_path):
    return write_base(tmp_path / "Task501_Clean")


@pytest.fixture
def broken(tmp_path):
    root = write_base(tmp_path / "Task502_Broken")
    for name in ("image_nan", "label_undeclared_value"):
        next(d for d in DEFECTS if d.name == name).apply(root)
    return root


@pytest.fixture
def msd(tmp_path):
    return write_msd_task(tmp_path / "Task09_Tiny", make_cases(2, "tiny", shape=(6, 8, 6), n_modalities=2))


# ------------------------------------------------------------------------------ python -m stages verify/convert
def test_stage_verify_clean(clean, tmp_path, capsys):
    assert stages_main(["verify", "--dataset", str(clean), "--report", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"verify {clean}" and out[-1].startswith("OK: no problems (3 training cases, 2 test cases")
    assert VerificationReport.load(tmp_path / "r.json").ok


def test_stage_verify_broken_prints_every_problem_and_exits_2(broken, tmp_path, capsys):
    assert stages_main(["verify", "--dataset", str(broken), "--report", str(tmp_path / "r.json")]) == 2
    out = capsys.readouterr().out.splitlines()
    assert NAN_LINE in out
    assert ("PROBLEM case_002: labelsTr/case_002.nii.gz: label values [3] are not declared in dataset.json "
            "labels [0, 1, 2]") in out
    assert out[-1].startswith("FAILED: 2 problems in 2 cases")
    assert len(VerificationReport.load(tmp_path / "r.json").problems) == 2


def test_stage_verify_missing_folder_and_bad_flags(tmp_path, capsys):
    assert stages_main(["verify", "--dataset", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().out
    assert stages_main(["verify"]) == 2  # --dataset is required


def test_stage_verify_subprocess_exit_code(broken):
    proc = subprocess.run([sys.executable, "-m", "stages", "verify", "--dataset", str(broken)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert NAN_LINE in proc.stdout.splitlines()
    assert "failed verification" in proc.stderr and "Traceback" not in proc.stderr


def test_stage_convert_writes_result_json(msd, tmp_path, capsys):
    out = tmp_path / "raw"
    args = ["convert", "--input", str(msd), "--output", str(out), "--task-id", "509", "--result-json",
            str(tmp_path / "result.json")]
    assert stages_main(args) == 0
    result = ConversionResult.model_validate(StageResult.load(tmp_path / "result.json").extra)
    assert result.task == "Task509_Tiny" and result.output == str(out / "Task509_Tiny")
    assert (result.num_training, result.num_modalities) == (2, 2)
    assert capsys.readouterr().out.strip() == str(out / "Task509_Tiny")
    assert (out / "Task509_Tiny" / "imagesTr" / "tiny_001_0001.nii.gz").is_file()
    (out / "Task509_Tiny" / "dataset.json").write_text("{}")
    assert stages_main(args) == 2  # a different target is kept
    assert stages_main(args + ["--overwrite"]) == 0
    assert stages_main(["verify", "--dataset", str(out / "Task509_Tiny")]) == 0


# ------------------------------------------------------------------------------ nnkube dataset verify/convert
def test_nnkube_dataset_verify(clean, broken, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(nnkube_app, ["dataset", "verify", str(clean)])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.splitlines()[-1].startswith("OK: no problems")
    bad = runner.invoke(nnkube_app, ["dataset", "verify", str(broken), "--report", str(tmp_path / "r.json")])
    assert bad.exit_code == 2
    assert NAN_LINE in bad.stdout.splitlines()
    assert not VerificationReport.load(tmp_path / "r.json").ok


def test_nnkube_dataset_verify_reports_missing_files(clean):
    (clean / "imagesTr" / "case_001_0000.nii.gz").unlink()
    result = CliRunner().invoke(nnkube_app, ["dataset", "verify", str(clean)])
    assert result.exit_code == 2 and MISSING_LINE in result.stdout.splitlines()


def test_nnkube_dataset_convert(msd, tmp_path):
    result = CliRunner().invoke(nnkube_app, ["dataset", "convert", str(msd), str(tmp_path / "raw")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "raw" / "Task009_Tiny")
    bad = CliRunner().invoke(nnkube_app, ["dataset", "convert", str(tmp_path / "Tiny"), str(tmp_path / "raw")])
    assert bad.exit_code == 2 and "not a task folder name" in bad.output


# ------------------------------------------------------------------------------ nnUNet_convert_decathlon_task
def test_compat_convert_needs_raw_data_base(msd, monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw_data_base", raising=False)
    assert compat_convert.main(["-i", str(msd)]) == 2
    assert "nnUNet_raw_data_base is not set" in capsys.readouterr().err


def test_compat_convert_uses_raw_data_base(msd, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_raw_data_base", str(tmp_path / "base"))
    assert compat_convert.main(["-i", str(msd), "-p", "1"]) == 0
    target = tmp_path / "base" / "nnUNet_raw_data" / "Task009_Tiny"
    assert capsys.readouterr().out.strip() == str(target)
    assert sorted(p.name for p in (target / "imagesTr").iterdir())[:2] == ["tiny_000_0000.nii.gz",
                                                                          "tiny_000_0001.nii.gz"]
    assert compat_convert.main(["-i", str(msd), "-output_task_id", "510"]) == 0
    assert (tmp_path / "base" / "nnUNet_raw_data" / "Task510_Tiny" / "dataset.json").is_file()
    (target / "dataset.json").unlink()
    assert compat_convert.main(["-i", str(msd)]) == 2
    assert "already exists and differs" in capsys.readouterr().err
    assert compat_convert.main(["-i", str(msd), "--overwrite"]) == 0


def test_compat_convert_bad_flags():
    with pytest.raises(SystemExit) as info:
        compat_convert.main([])
    assert info.value.code == 2


def test_compat_console_script(msd, tmp_path):
    script = Path(sys.executable).with_name("nnUNet_convert_decathlon_task")
    if not script.exists():
        script = shutil.which("nnUNet_convert_decathlon_task")
        if script is None:
            pytest.skip("console script not installed")
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_raw_data_base"}
    unset = subprocess.run([str(script), "-i", str(msd)], env=env, capture_output=True, text=True, timeout=120)
    assert unset.returncode == 2 and "nnUNet_raw_data_base" in unset.stderr
    env["nnUNet_raw_data_base"] = str(tmp_path / "base")
    ok = subprocess.run([str(script), "-i", str(msd)], env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "base" / "nnUNet_raw_data" / "Task009_Tiny" / "labelsTr" / "tiny_001.nii.gz").is_file()
