"""Dataset steps on an S3 prefix (SeaweedFS): verify and convert behave as on a local folder."""

from __future__ import annotations

import pytest
from nnkube.cli import app as nnkube_app
from typer.testing import CliRunner

from stages import storage
from stages.__main__ import main as stages_main
from stages.dataset.convert import ConversionResult
from stages.dataset.staging import convert_uri, verify_uri
from stages.errors import BadInputError
from stages.stagekit import StageResult
from tests.dataset.corpus import DEFECTS, write_base
from tests.factories import make_cases, write_msd_task

pytestmark = [pytest.mark.s3, pytest.mark.usefixtures("restore_logging")]


def test_verify_s3_prefix(s3_bucket, tmp_path, capsys):
    clean = write_base(tmp_path / "clean" / "Task501_Clean")
    broken = write_base(tmp_path / "broken" / "Task502_Broken")
    next(d for d in DEFECTS if d.name == "truncated_gzip").apply(broken)
    storage.upload_tree(clean, f"{s3_bucket}/datasets/Task501_Clean")
    storage.upload_tree(broken, f"{s3_bucket}/datasets/Task502_Broken")

    report = verify_uri(f"{s3_bucket}/datasets/Task501_Clean")
    assert report.ok and report.dataset == f"{s3_bucket}/datasets/Task501_Clean"
    assert report.num_files_checked == 13

    runner = CliRunner()
    ok = runner.invoke(nnkube_app, ["dataset", "verify", f"{s3_bucket}/datasets/Task501_Clean"])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(nnkube_app, ["dataset", "verify", f"{s3_bucket}/datasets/Task502_Broken"])
    assert bad.exit_code == 2
    assert any(line.startswith("PROBLEM case_002: imagesTr/case_002_0000.nii.gz: corrupt or truncated gzip")
               for line in bad.stdout.splitlines())
    missing = runner.invoke(nnkube_app, ["dataset", "verify", f"{s3_bucket}/datasets/Nothing"])
    assert missing.exit_code == 2 and "error:" in missing.output

    assert stages_main(["verify", "--dataset", f"{s3_bucket}/datasets/Task502_Broken"]) == 2
    assert "corrupt or truncated gzip" in capsys.readouterr().out


def test_convert_s3_to_s3(s3_bucket, tmp_path):
    msd = write_msd_task(tmp_path / "Task08_Small", make_cases(2, "small", shape=(6, 8, 6), n_modalities=2))
    storage.upload_tree(msd, f"{s3_bucket}/msd/Task08_Small")
    result_path = tmp_path / "result.json"
    args = ["convert", "--input", f"{s3_bucket}/msd/Task08_Small", "--output", f"{s3_bucket}/raw",
            "--result-json", str(result_path)]
    assert stages_main(args) == 0
    result = ConversionResult.model_validate(StageResult.load(result_path).extra)
    assert result.output == f"{s3_bucket}/raw/Task008_Small" and result.num_modalities == 2
    names = [u.rsplit("/Task008_Small/", 1)[1] for u in storage.list_prefix(result.output)]
    assert sorted(names) == ["_NNKUBE_COMPLETE.json", "dataset.json",
                             "imagesTr/small_000_0000.nii.gz", "imagesTr/small_000_0001.nii.gz",
                             "imagesTr/small_001_0000.nii.gz", "imagesTr/small_001_0001.nii.gz",
                             "labelsTr/small_000.nii.gz", "labelsTr/small_001.nii.gz"]
    assert verify_uri(result.output).ok
    # identical re-run: accepted; a different target: refused unless overwrite
    assert convert_uri(f"{s3_bucket}/msd/Task08_Small", f"{s3_bucket}/raw").output == result.output
    storage.write_bytes(f"{result.output}/imagesTr/extra_0000.nii.gz", b"x")
    with pytest.raises(BadInputError, match="differs"):
        convert_uri(f"{s3_bucket}/msd/Task08_Small", f"{s3_bucket}/raw")
    convert_uri(f"{s3_bucket}/msd/Task08_Small", f"{s3_bucket}/raw", overwrite=True)
    assert len(storage.list_prefix(result.output)) == 7
