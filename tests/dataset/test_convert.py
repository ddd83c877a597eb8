"""MSD -> nnU-Net v1 conversion: exact copies of 3D images, correct 4D splits, atomic and idempotent output."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from stages.dataset import convert as convert_module
from stages.dataset.convert import conversion_result, convert_msd_task, split_image
from stages.dataset.layout import list_case_ids
from stages.dataset.verify import format_report, verify_dataset
from stages.errors import BadInputError, DatasetError
from stages.imageio import Geometry, read_image
from tests.dataset.corpus import tree_digest
from tests.factories import make_cases, write_msd_task

ROTATION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z, sitk row-major


# ----------------------------------------------------------------------------------------- real Hippocampus
@pytest.fixture(scope="module")
def converted_hippocampus(hippocampus, tmp_path_factory):
    base = tmp_path_factory.mktemp("raw_base")
    start = time.perf_counter()
    task = convert_msd_task(hippocampus, base, num_processes=2)
    return task, time.perf_counter() - start


def test_hippocampus_conversion_is_exact(hippocampus, converted_hippocampus):
    task, _ = converted_hippocampus
    assert task.name == "Task004_Hippocampus" and task.parent.name == "nnUNet_raw_data"
    assert (task / "dataset.json").read_bytes() == (hippocampus / "dataset.json").read_bytes()
    sources = sorted((hippocampus / "imagesTr").glob("*.nii.gz"))
    assert len(sources) == 208
    assert list_case_ids(task / "imagesTr") == [p.name[: -len(".nii.gz")] for p in sources]
    assert len(list(task.joinpath("imagesTs").iterdir())) == 130
    for src in sources + sorted((hippocampus / "imagesTs").glob("*.nii.gz")):
        out = task / src.parent.name / src.name.replace(".nii.gz", "_0000.nii.gz")
        assert out.read_bytes() == src.read_bytes(), out
    for src in sources:
        case = src.name[: -len(".nii.gz")]
        for orig, conv in ((src, task / "imagesTr" / f"{case}_0000.nii.gz"),
                           (hippocampus / "labelsTr" / src.name, task / "labelsTr" / src.name)):
            a, ga = read_image(orig)
            b, gb = read_image(conv)
            assert a.dtype == b.dtype and np.array_equal(a, b), conv
            assert ga == gb, conv
    float_labels = [p.name for p in (task / "labelsTr").iterdir()
                    if sitk.ReadImage(str(p)).GetPixelID() == sitk.sitkFloat32]
    assert len(float_labels) == 2  # the two MSD float32 label maps are copied as they are


def test_hippocampus_converted_task_verifies(converted_hippocampus):
    task, _ = converted_hippocampus
    start = time.perf_counter()
    report = verify_dataset(task, workers=2)
    elapsed = time.perf_counter() - start
    assert report.ok, format_report(report)
    assert (report.num_training_cases, report.num_test_cases, report.num_files_checked) == (208, 130, 546)
    assert elapsed < 60


# ----------------------------------------------------------------------------------------- synthetic MSD
def _msd(tmp_path: Path, n_modalities: int, name: str = "Task07_Synth", **kwargs) -> tuple[Path, list]:
    cases = make_cases(2, "synth", shape=(6, 9, 7), spacing=(3.0, 0.8, 0.7), n_modalities=n_modalities, **kwargs)
    for c in cases:
        c.origin = (10.0, -20.0, 5.5)
        c.direction = ROTATION
    return write_msd_task(tmp_path / "msd" / name, cases), cases


def test_4d_multimodal_is_split_with_3d_geometry(tmp_path):
    msd, cases = _msd(tmp_path, n_modalities=3)
    assert sitk.ReadImage(str(msd / "imagesTr" / "synth_000.nii.gz")).GetDimension() == 4
    task = convert_msd_task(msd, tmp_path / "base", num_processes=2)
    assert task.name == "Task007_Synth"
    expected = Geometry(spacing=(0.7, 0.8, 3.0), origin=(10.0, -20.0, 5.5), direction=ROTATION, size=(7, 9, 6))
    for c in cases:
        for m, original in enumerate(c.images):
            array, geometry = read_image(task / "imagesTr" / f"{c.case_id}_{m:04d}.nii.gz")
            assert array.dtype == np.float32 and np.array_equal(array, original)
            assert geometry.mismatches(expected, rtol=0, atol=1e-6) == []
        assert not (task / "imagesTr" / f"{c.case_id}_0003.nii.gz").exists()
        label = f"labelsTr/{c.case_id}.nii.gz"
        assert (task / label).read_bytes() == (msd / label).read_bytes()
    assert verify_dataset(task).ok
    result = conversion_result(task)
    assert (result.task, result.num_training, result.num_modalities) == ("Task007_Synth", 2, 3)


def test_vector_image_is_split_by_component(tmp_path):
    msd, cases = _msd(tmp_path, n_modalities=1)
    src = msd / "imagesTr" / "synth_001.nii.gz"
    a = sitk.ReadImage(str(src))
    b = sitk.Cast(a * 2.0 + 1.0, a.GetPixelID())
    vector = sitk.Compose(a, b)
    vector.CopyInformation(a)
    sitk.WriteImage(vector, str(src))
    out = split_image(src, tmp_path)
    assert [p.name for p in out] == ["synth_001_0000.nii.gz", "synth_001_0001.nii.gz"]
    array1, geometry1 = read_image(out[1])
    assert np.allclose(array1, cases[1].images[0] * 2 + 1) and geometry1 == Geometry.of(a)


def test_3d_image_is_copied_byte_for_byte_in_any_format(tmp_path):
    msd, _ = _msd(tmp_path, n_modalities=1)
    src = msd / "imagesTr" / "synth_000.nii.gz"
    nrrd = msd / "imagesTr" / "synth_000.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(src)), str(nrrd))
    src.unlink()
    out = split_image(nrrd, tmp_path)
    assert [p.name for p in out] == ["synth_000_0000.nrrd"] and out[0].read_bytes() == nrrd.read_bytes()


def test_output_task_id_and_hidden_files(tmp_path):
    msd, _ = _msd(tmp_path, n_modalities=1)
    (msd / "imagesTr" / "._synth_000.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    task = convert_msd_task(msd, tmp_path / "base", output_task_id=501)
    assert task == tmp_path / "base" / "nnUNet_raw_data" / "Task501_Synth"
    assert sorted(p.name for p in (task / "imagesTr").iterdir()) == ["synth_000_0000.nii.gz", "synth_001_0000.nii.gz"]
    assert os.access(task / "dataset.json", os.W_OK)


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    msd, _ = _msd(tmp_path, n_modalities=2)
    real = convert_module.split_image

    def failing(src, dst):
        if Path(src).name == "synth_001.nii.gz":
            raise RuntimeError("disk full")
        return real(src, dst)

    monkeypatch.setattr(convert_module, "split_image", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_msd_task(msd, tmp_path / "base")
    assert list((tmp_path / "base" / "nnUNet_raw_data").iterdir()) == []


def test_unreadable_image_is_named_and_nothing_is_left(tmp_path):
    msd, _ = _msd(tmp_path, n_modalities=2)
    (msd / "imagesTr" / "synth_000.nii.gz").write_bytes(b"garbage")
    (msd / "imagesTr" / "synth_001.nii.gz").write_bytes(b"")
    with pytest.raises(DatasetError) as info:
        convert_msd_task(msd, tmp_path / "base")
    assert "2 file(s)" in str(info.value)
    assert "synth_000.nii.gz" in str(info.value) and "synth_001.nii.gz" in str(info.value)
    assert list((tmp_path / "base" / "nnUNet_raw_data").iterdir()) == []


def test_reconversion_into_an_identical_target_is_a_noop(tmp_path):
    msd, _ = _msd(tmp_path, n_modalities=2)
    task = convert_msd_task(msd, tmp_path / "base")
    inode, digest = task.stat().st_ino, tree_digest(task)
    assert convert_msd_task(msd, tmp_path / "base") == task
    assert task.stat().st_ino == inode and tree_digest(task) == digest
    assert [p.name for p in task.parent.iterdir()] == [task.name]


def test_existing_different_target_is_kept_unless_overwrite(tmp_path):
    msd, _ = _msd(tmp_path, n_modalities=2)
    task = convert_msd_task(msd, tmp_path / "base")
    fresh = tree_digest(task)
    (task / "imagesTr" / "synth_000_0001.nii.gz").write_bytes(b"edited")
    (task / "notes.txt").write_text("mine")
    edited = tree_digest(task)
    with pytest.raises(BadInputError, match="already exists and differs"):
        convert_msd_task(msd, tmp_path / "base")
    assert tree_digest(task) == edited
    assert convert_msd_task(msd, tmp_path / "base", overwrite=True) == task
    assert tree_digest(task) == fresh
    assert [p.name for p in task.parent.iterdir()] == [task.name]


def test_already_converted_folder_is_refused(tmp_path):
    msd, _ = _msd(tmp_path, n_modalities=2)
    task = convert_msd_task(msd, tmp_path / "base")
    again = task.rename(tmp_path / "Task12_Synth")
    with pytest.raises(DatasetError, match="looks converted already"):
        convert_msd_task(again, tmp_path / "base")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda msd: msd.rename(msd.with_name("Synth")), "not a task folder name"),
        (lambda msd: [p.unlink() for p in (msd / "labelsTr").iterdir()] and (msd / "labelsTr").rmdir(),
         "labelsTr: folder missing"),
        (lambda msd: (msd / "dataset.json").write_text("[]"), "dataset.json must hold a JSON object"),
        (lambda msd: (msd / "dataset.json").write_text(json.dumps({"labels": {"0": "bg"}})), "modality"),
    ],
    ids=["bad_name", "no_labelsTr", "json_not_object", "json_no_modality"],
)
def test_bad_msd_folder_is_refused(tmp_path, damage, message):
    msd, _ = _msd(tmp_path, n_modalities=1)
    damage(msd)
    source = msd if msd.exists() else msd.with_name("Synth")
    with pytest.raises(DatasetError, match=message):
        convert_msd_task(source, tmp_path / "base")
    assert not (tmp_path / "base" / "nnUNet_raw_data").exists() or not any(
        (tmp_path / "base" / "nnUNet_raw_data").iterdir()
    )
