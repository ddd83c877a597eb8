"""nnU-Net v1 file naming: modality suffixes, case ids from folders, the folder index."""

from __future__ import annotations

import pytest

from stages.dataset.layout import (
    FolderIndex,
    expected_test_files,
    expected_training_files,
    image_file_names,
    label_file_name,
    list_case_ids,
    list_image_files,
    list_label_case_ids,
    modality_file_name,
    split_image_file_name,
    suffix_of_entry,
)


def test_names():
    assert modality_file_name("la_003", 1) == "la_003_0001.nii.gz"
    assert modality_file_name("la_003", 12, ".nrrd") == "la_003_0012.nrrd"
    assert label_file_name("la_003", ".mha") == "la_003.mha"
    assert image_file_names("c", 2, ".nii") == ["c_0000.nii", "c_0001.nii"]
    assert expected_training_files("c", 2) == (["imagesTr/c_0000.nii.gz", "imagesTr/c_0001.nii.gz"],
                                               "labelsTr/c.nii.gz")
    assert expected_test_files("t", 1, ".mha") == ["imagesTs/t_0000.mha"]
    assert suffix_of_entry("./imagesTr/a.nrrd") == ".nrrd" and suffix_of_entry("./imagesTr/a") == ".nii.gz"


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("la_003_0000.nii.gz", ("la_003", 0)),
        ("la_003_0012.NII.GZ", ("la_003", 12)),
        ("x_1_0003.nrrd", ("x_1", 3)),
        ("x_0001.mha", ("x", 1)),
        ("x_0001.nii", ("x", 1)),
        ("la_003.nii.gz", None),
        ("la_003_001.nii.gz", None),
        ("la_003_0000.txt", None),
        ("_0000.nii.gz", None),
    ],
)
def test_split_image_file_name(name, parsed):
    assert split_image_file_name(name) == parsed


def test_listing_folders(tmp_path):
    images = tmp_path / "imagesTr"
    images.mkdir()
    for name in ["b_0000.nii.gz", "b_0001.nii.gz", "a_0000.nrrd", "c_0000.mha", "._a_0000.nii.gz", "notes.txt",
                 "d.nii.gz"]:
        (images / name).write_bytes(b"x")
    (images / "sub_0000.nii.gz").mkdir()
    assert list_case_ids(images) == ["a", "b", "c"]
    assert list_image_files(images) == ["a_0000.nrrd", "b_0000.nii.gz", "b_0001.nii.gz", "c_0000.mha", "d.nii.gz"]
    labels = tmp_path / "labelsTr"
    labels.mkdir()
    for name in ["b.nii.gz", "a.nrrd", ".DS_Store"]:
        (labels / name).write_bytes(b"x")
    assert list_label_case_ids(labels) == ["a", "b"]
    assert list_case_ids(tmp_path / "missing") == []


def test_folder_index(tmp_path):
    for name in ["a_0000.nii.gz", "a_0000.nrrd", "b_0000.nii.gz", "stray.txt", ".hidden"]:
        (tmp_path / name).write_bytes(b"x")
    index = FolderIndex.scan(tmp_path)
    assert index.exists and ".hidden" not in index.names
    assert index.find("a_0000") == ["a_0000.nii.gz", "a_0000.nrrd"]
    assert index.find("b_0000") == ["b_0000.nii.gz"]
    assert index.find("c_0000") == []
    assert index.unclaimed() == ["stray.txt"]
    assert not FolderIndex.scan(tmp_path / "missing").exists
