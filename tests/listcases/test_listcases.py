"""``list-cases``: cases grouped by modality, sorted [i::n] shards, bad inputs named, JSON for withParam."""

from __future__ import annotations

import json

import pytest

from stages import storage
from stages.__main__ import main
from stages.errors import DatasetError
from stages.listcases.listing import list_cases, make_shard_plan
from stages.listcases.models import ShardPlan, split_cases
from stages.stagekit import StageResult

pytestmark = pytest.mark.usefixtures("restore_logging")


def _images(folder, cases, modalities=(0, 1), extra=()):
    for case in cases:
        for m in modalities:
            storage.write_bytes(storage.join(folder, f"{case}_{m:04d}.nii.gz"), f"{case}{m}".encode())
    for name in extra:
        storage.write_bytes(storage.join(folder, name), b"x")


def test_split_cases_matches_part_id_num_parts():
    ids = [f"c{i}" for i in (5, 3, 1, 0, 4, 2, 6)]
    assert split_cases(ids, 3) == [["c0", "c3", "c6"], ["c1", "c4"], ["c2", "c5"]]
    assert split_cases(ids[:2], 4) == [["c3"], ["c5"], [], []]


def test_cases_grouped_by_modality_ignoring_other_files(tmp_path):
    folder = str(tmp_path / "new")
    _images(folder, ["b", "a", "c_1"], extra=("README.md", ".hidden_0000.nii.gz", "sub/x_0000.nii.gz"))
    cases, modalities = list_cases(folder)
    assert modalities == [0, 1]
    assert cases == {"a": ["a_0000.nii.gz", "a_0001.nii.gz"], "b": ["b_0000.nii.gz", "b_0001.nii.gz"],
                     "c_1": ["c_1_0000.nii.gz", "c_1_0001.nii.gz"]}


def test_missing_modalities_and_bad_names_are_each_named(tmp_path):
    folder = tmp_path / "new"
    _images(str(folder), ["a", "b", "c"])
    (folder / "b_0001.nii.gz").unlink()
    (folder / "c_0000.nii.gz").unlink()
    (folder / "lonely.nii.gz").write_bytes(b"x")
    with pytest.raises(DatasetError) as info:
        list_cases(str(folder))
    text = str(info.value)
    assert "case b: missing modality 0001 (b_0001.nii.gz)" in text
    assert "case c: missing modality 0000 (c_0000.nii.gz)" in text
    assert "lonely.nii.gz: file name lacks the _XXXX modality suffix" in text
    assert "case a" not in text
    with pytest.raises(DatasetError, match=r"case a: a_0001.nii.gz: modality 0001 is not expected"):
        list_cases(str(tmp_path / "new"), num_modalities=1)
    with pytest.raises(DatasetError, match="no image files"):
        list_cases(str(tmp_path / "empty"))


def test_duplicate_formats_are_refused(tmp_path):
    folder = str(tmp_path / "new")
    _images(folder, ["a"], modalities=(0,), extra=("a_0000.nii",))
    with pytest.raises(DatasetError, match="case a: modality 0000 present in several files"):
        list_cases(folder)


def test_cli_writes_the_plan_and_prints_active_shards(tmp_path, capsys):
    folder = str(tmp_path / "new")
    _images(folder, [f"case_{i}" for i in range(3)])
    out = tmp_path / "plan" / "shards.json"
    args = ["list-cases", "--input", folder, "--num-shards", "5", "--output", str(out),
            "--result-json", str(tmp_path / "r.json")]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == [0, 1, 2]
    plan = ShardPlan.load(out)
    assert plan.shards == [["case_0"], ["case_1"], ["case_2"], [], []] and plan.num_shards == 5
    assert plan.shard_files(1) == {"case_1": [f"{folder}/case_1_0000.nii.gz", f"{folder}/case_1_0001.nii.gz"]}
    assert StageResult.load(tmp_path / "r.json").extra["num_cases"] == 3

    assert main(args) == 0  # unchanged input: skipped, same answer on stdout
    assert json.loads(capsys.readouterr().out) == [0, 1, 2]
    assert StageResult.load(tmp_path / "r.json").status == "skipped"

    assert main(["list-cases", "--input", folder, "--num-shards", "2", "--output", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == [0, 1]
    assert ShardPlan.load(out).shards == [["case_0", "case_2"], ["case_1"]]


def test_cli_bad_input_exits_2(tmp_path, capsys):
    folder = tmp_path / "new"
    _images(str(folder), ["a", "b"])
    (folder / "a_0001.nii.gz").unlink()
    assert main(["list-cases", "--input", str(folder), "--num-shards", "2", "--output", str(tmp_path / "s.json")]) == 2
    assert "case a: missing modality 0001" in capsys.readouterr().err
    assert main(["list-cases", "--input", str(folder), "--num-shards", "0", "--output", str(tmp_path / "s.json")]) == 2
    # writing the plan into the input prefix is refused
    (folder / "a_0001.nii.gz").write_bytes(b"x")
    assert main(["list-cases", "--input", str(folder), "--num-shards", "2", "--output", str(folder / "s.json")]) == 2
    assert not (folder / "s.json").exists()


@pytest.mark.s3
def test_s3_prefix(s3_bucket):
    prefix = f"{s3_bucket}/incoming/images"
    _images(prefix, [f"p{i:02d}" for i in range(7)], modalities=(0,))
    plan = make_shard_plan(prefix + "/", 3, num_modalities=1)
    assert plan.source == prefix and plan.active_shards == [0, 1, 2]
    assert plan.shard(2) == ["p02", "p05"]
    assert plan.shard_files(0)["p03"] == [f"{prefix}/p03_0000.nii.gz"]
