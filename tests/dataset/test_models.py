"""dataset.json models, case ids and task names."""

from __future__ import annotations

import json

import pytest

from stages.dataset.models import (
    DatasetJson,
    TaskName,
    case_id_from_entry,
    load_dataset_json,
    parse_dataset_json,
    unsafe_case_id_reason,
)
from stages.errors import BadInputError, DatasetError

MSD = {
    "name": "Hippocampus",
    "relase": "1.0 04/05/2018",
    "tensorImageSize": "3D",
    "modality": {"0": "MRI"},
    "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
    "numTraining": 2,
    "numTest": 1,
    "training": [
        {"image": "./imagesTr/hippocampus_001.nii.gz", "label": "./labelsTr/hippocampus_001.nii.gz"},
        {"image": "./imagesTr/hippocampus_003.nii.gz", "label": "./labelsTr/hippocampus_003.nii.gz"},
    ],
    "test": ["./imagesTs/hippocampus_267.nii.gz"],
}


def test_msd_fields_and_helpers():
    dj = parse_dataset_json(MSD)
    assert dj.release == "1.0 04/05/2018"
    assert dj.case_ids() == ["hippocampus_001", "hippocampus_003"]
    assert dj.test_case_ids() == ["hippocampus_267"]
    assert (dj.num_modalities, dj.label_values, dj.modality_indices) == (1, [0, 1, 2], [0])


def test_save_writes_release_and_keeps_extra_fields(tmp_path):
    dj = parse_dataset_json({**MSD, "custom": {"k": 1}})
    path = dj.save(tmp_path / "dataset.json")
    raw = json.loads(path.read_text())
    assert raw["release"] == "1.0 04/05/2018" and "relase" not in raw
    assert raw["custom"] == {"k": 1} and raw["labels"] == MSD["labels"]
    assert load_dataset_json(tmp_path) == dj


def test_test_entries_as_objects_are_accepted():
    dj = parse_dataset_json({**MSD, "test": [{"image": "./imagesTs/a.nii.gz"}]})
    assert dj.test_case_ids() == ["a"]


def test_real_dataset_json(hippocampus):
    dj = load_dataset_json(hippocampus / "dataset.json")
    assert len(dj.case_ids()) == 208 and len(set(dj.case_ids())) == 208
    assert dj.modality == {"0": "MRI"} and dj.label_values == [0, 1, 2]
    assert dj.release.startswith("1.0")


@pytest.mark.parametrize(
    "change, words",
    [
        ({"labels": {"one": "x"}}, ["labels", "'one'"]),
        ({"labels": {}}, ["labels", "background"]),
        ({"modality": {"0": "CT", "-1": "x"}}, ["modality", "'-1'"]),
        ({"training": [{"image": "./imagesTr/a.nii.gz"}]}, ["training.0.label", "Field required"]),
        ({"numTraining": "many"}, ["numTraining"]),
    ],
)
def test_invalid_fields_are_named(tmp_path, change, words):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({**MSD, **change}))
    with pytest.raises(DatasetError) as info:
        load_dataset_json(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid dataset.json")
    assert all(w in message for w in words), message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(DatasetError, match="dataset.json not found"):
        load_dataset_json(tmp_path)
    (tmp_path / "dataset.json").write_text("{")
    with pytest.raises(DatasetError, match=f"{tmp_path / 'dataset.json'}: dataset.json is not valid JSON"):
        load_dataset_json(tmp_path)
    with pytest.raises(DatasetError, match="must hold a JSON object"):
        parse_dataset_json([1, 2])
    with pytest.raises(DatasetError, match="modality: Field required"):
        parse_dataset_json({"labels": {"0": "bg"}})


@pytest.mark.parametrize(
    "entry, folder, case",
    [
        ("./imagesTr/la_003.nii.gz", "imagesTr", "la_003"),
        ("imagesTr/la_003.nii.gz", "imagesTr", "la_003"),
        ("./labelsTr/la_003.nrrd", "labelsTr", "la_003"),
        ("la_003.mha", "imagesTs", "la_003"),
        ("./imagesTr/../x.nii.gz", "imagesTr", "../x"),
        ("/abs/x.nii.gz", "imagesTr", "/abs/x"),
    ],
)
def test_case_id_from_entry(entry, folder, case):
    assert case_id_from_entry(entry, folder) == case


@pytest.mark.parametrize(
    "case, reason",
    [
        ("la_003", None),
        ("case.v2-final", None),
        ("a..b", None),
        ("", "empty"),
        ("../x", "'..'"),
        ("sub/x", "path separator"),
        ("sub\\x", "path separator"),
        ("/etc/x", "absolute"),
        ("C:\\x", "absolute"),
        ("..", "'..'"),
        ("bad\x00id", "control"),
        ("tab\tid", "control"),
        (".hidden", "hidden"),
    ],
)
def test_unsafe_case_ids(case, reason):
    got = unsafe_case_id_reason(case)
    assert (got is None) if reason is None else (reason in got)


@pytest.mark.parametrize(
    "text, task_id, name, formatted",
    [
        ("Task04_Hippocampus", 4, "Hippocampus", "Task004_Hippocampus"),
        ("Task004_Hippocampus", 4, "Hippocampus", "Task004_Hippocampus"),
        ("/data/msd/Task10_Colon/", 10, "Colon", "Task010_Colon"),
        ("Task501_My_Data-2", 501, "My_Data-2", "Task501_My_Data-2"),
    ],
)
def test_task_name_parse_and_format(text, task_id, name, formatted):
    task = TaskName.parse(text)
    assert (task.task_id, task.name, task.format(), str(task)) == (task_id, name, formatted, formatted)
    assert TaskName.parse(task.format()) == task


@pytest.mark.parametrize("text", ["Hippocampus", "Task4_Hippo", "Task1000_X", "Task04_", "Task04-Hippo", "task04_x"])
def test_task_name_rejects(text):
    with pytest.raises(DatasetError, match="not a task folder name"):
        TaskName.parse(text)


def test_task_name_with_id():
    assert TaskName.parse("Task04_Hippocampus").with_id(501).format() == "Task501_Hippocampus"
    with pytest.raises(BadInputError, match="outside 0..999"):
        TaskName.parse("Task04_Hippocampus").with_id(1000)


def test_model_is_usable_directly():
    dj = DatasetJson(modality={"0": "CT"}, labels={"0": "background", "1": "liver"})
    assert dj.training == [] and dj.to_dict()["labels"] == {"0": "background", "1": "liver"}
