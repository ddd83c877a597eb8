"""A corpus of broken raw datasets: one valid synthetic base, one distinct defect each.

The base (built by :func:`write_base`) has 3 training cases with 2 modalities and 2 test cases of 8x10x8 voxels.
Each :class:`Defect` damages one thing and names the problem the verifier must report: the case, the file
(relative to the dataset folder) and a word of the message.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tests.factories import make_cases, write_nnunet_task

SHAPE = (8, 10, 8)
N_MODALITIES = 2


def write_base(root: Path) -> Path:
    """A valid dataset: case_000..002 (2 modalities, labels 0/1/2) and test_000..001 in imagesTs."""
    cases = make_cases(3, "case", shape=SHAPE, n_modalities=N_MODALITIES)
    tests = make_cases(2, "test", shape=SHAPE, n_modalities=N_MODALITIES)
    for c in tests:
        c.label = None
    return write_nnunet_task(root, cases, test_cases=tests)


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file and ``<dir>`` marker of every folder below ``root``."""
    out = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        out[rel_dir + "/"] = "<dir>"
        for name in filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def write_volume(root: Path, rel: str, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                 direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> None:
    """Write ``array`` (z, y, x) with an sitk-order geometry to ``root/rel``."""
    image = sitk.GetImageFromArray(array)
    if image.GetDimension() == 3:
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
    sitk.WriteImage(image, str(root / rel))


def read_array(root: Path, rel: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(root / rel)))


def edit_json(root: Path, change: Callable[[dict], None]) -> None:
    path = root / "dataset.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def _image(case: str, m: int = 0, folder: str = "imagesTr") -> str:
    return f"{folder}/{case}_{m:04d}.nii.gz"


def _label(case: str) -> str:
    return f"labelsTr/{case}.nii.gz"


def _rewrite_image(rel: str, **geometry) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        write_volume(root, rel, read_array(root, rel), **geometry)

    return apply


def _set_voxels(rel: str, value: float, dtype=np.float32) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        array = read_array(root, rel).astype(dtype)
        array[2, 3, 4] = value
        array[5, 5, 5] = value
        write_volume(root, rel, array)

    return apply


def _delete(rel: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        target = root / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return apply


def _copy(src: str, dst: str) -> Callable[[Path], None]:
    return lambda root: shutil.copyfile(root / src, root / dst)


def _write_bytes(rel: str, make: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / rel
        path.write_bytes(make(path.read_bytes()))

    return apply


def _flip_middle(data: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 16]) + data[mid + 16 :]


def _json(change: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda root: edit_json(root, change)


def _add_entry(image: str) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        d["training"].append({"image": image, "label": image.replace("imagesTr", "labelsTr")})

    return change


def _write_4d(root: Path) -> None:
    arr = read_array(root, _image("case_000"))
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(arr)] * 2), str(root / _image("case_000")))


def _write_2d(root: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((10, 8), np.float32)), str(root / _image("case_002")))


def _write_vector(root: Path) -> None:
    arr = read_array(root, _image("case_001"))
    image = sitk.Compose([sitk.GetImageFromArray(arr)] * 3)
    sitk.WriteImage(image, str(root / _image("case_001")))


@dataclass(frozen=True)
class Defect:
    """One damage to the base dataset and the problem it must cause."""

    name: str
    apply: Callable[[Path], None]
    case: str | None
    file: str | None
    text: str


DEFECTS: list[Defect] = [
    Defect("dataset_json_missing", _delete("dataset.json"), None, "dataset.json", "not found"),
    Defect("dataset_json_not_json", lambda r: (r / "dataset.json").write_text("{not json"), None, "dataset.json",
           "not valid JSON"),
    Defect("dataset_json_bad_label_key", _json(lambda d: d.update(labels={"bg": "background"})), None,
           "dataset.json", "labels key 'bg'"),
    Defect("dataset_json_no_modality", _json(lambda d: d.pop("modality")), None, "dataset.json", "modality"),
    Defect("imagesTr_missing", _delete("imagesTr"), None, "imagesTr/", "folder missing"),
    Defect("labelsTr_missing", _delete("labelsTr"), None, "labelsTr/", "folder missing"),
    Defect("image_missing", _delete(_image("case_001")), "case_001", _image("case_001"), "missing"),
    Defect("modality_missing", _delete(_image("case_002", 1)), "case_002", _image("case_002", 1), "modality 1"),
    Defect("label_missing", _delete(_label("case_002")), "case_002", _label("case_002"), "label file missing"),
    Defect("stray_image", _copy(_image("case_000"), _image("extra_999")), "extra_999", _image("extra_999"),
           "stray file"),
    Defect("stray_label", _copy(_label("case_000"), _label("extra_999")), "extra_999", _label("extra_999"),
           "stray label file"),
    Defect("stray_not_image", lambda r: (r / "imagesTr" / "notes.txt").write_text("x"), None, "imagesTr/notes.txt",
           "not an image"),
    Defect("undeclared_modality", _copy(_image("case_000"), _image("case_000", 2)), "case_000",
           _image("case_000", 2), "modality 2 is not declared"),
    Defect("msd_style_image", _copy(_image("case_001"), "imagesTr/case_001.nii.gz"), "case_001",
           "imagesTr/case_001.nii.gz", "MSD-style"),
    Defect("same_case_two_formats", lambda r: sitk.WriteImage(sitk.ReadImage(str(r / _image("case_000"))),
                                                              str(r / "imagesTr/case_000_0000.nrrd")),
           "case_000", _image("case_000"), "several formats"),
    Defect("shape_mismatch", lambda r: write_volume(r, _image("case_001", 1), np.ones((8, 10, 9), np.float32)),
           "case_001", _image("case_001", 1), "size"),
    Defect("spacing_mismatch", _rewrite_image(_image("case_001"), spacing=(1.0, 1.0, 2.5)), "case_001",
           _image("case_001"), "spacing"),
    Defect("origin_mismatch", _rewrite_image(_image("case_002"), origin=(0.0, 3.0, 0.0)), "case_002",
           _image("case_002"), "origin"),
    Defect("direction_mismatch", _rewrite_image(_image("case_000", 1), direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)),
           "case_000", _image("case_000", 1), "direction"),
    Defect("label_geometry_mismatch", _rewrite_image(_label("case_000"), spacing=(0.5, 1.0, 1.0)), "case_000",
           _image("case_000"), f"does not match {_label('case_000')}"),
    Defect("image_nan", _set_voxels(_image("case_001"), np.nan), "case_001", _image("case_001"), "2 NaN"),
    Defect("image_inf", _set_voxels(_image("case_002", 1), np.inf), "case_002", _image("case_002", 1), "2 Inf"),
    Defect("label_non_integer", _set_voxels(_label("case_001"), 0.5), "case_001", _label("case_001"),
           "non-integer label values"),
    Defect("label_nan", _set_voxels(_label("case_000"), np.nan), "case_000", _label("case_000"), "non-finite"),
    Defect("label_undeclared_value", _set_voxels(_label("case_002"), 3, np.uint8), "case_002", _label("case_002"),
           "label values [3] are not declared"),
    Defect("label_negative_value", _set_voxels(_label("case_002"), -1, np.int16), "case_002", _label("case_002"),
           "label values [-1] are not declared"),
    Defect("labels_not_consecutive", _json(lambda d: d["labels"].update({"5": "extra"})), None, "dataset.json",
           "not consecutive"),
    Defect("modalities_not_consecutive", _json(lambda d: d["modality"].update({"3": "T2"})), None, "dataset.json",
           "modality keys"),
    Defect("image_4d", _write_4d, "case_000", _image("case_000"), "4D image where a 3D image is expected"),
    Defect("image_2d", _write_2d, "case_002", _image("case_002"), "2D image"),
    Defect("image_vector", _write_vector, "case_001", _image("case_001"), "3 components per voxel"),
    Defect("unreadable_image", _write_bytes(_image("case_001"), lambda b: gzip.compress(b"not an image" * 50)),
           "case_001", _image("case_001"), "cannot read image"),
    Defect("empty_file", _write_bytes(_label("case_000"), lambda b: b""), "case_000", _label("case_000"),
           "empty file"),
    Defect("truncated_gzip", _write_bytes(_image("case_002"), lambda b: b[: len(b) // 2]), "case_002",
           _image("case_002"), "truncated"),
    Defect("corrupt_gzip", _write_bytes(_label("case_001"), _flip_middle), "case_001", _label("case_001"),
           "corrupt"),
    Defect("duplicate_case", _json(lambda d: d["training"].append(dict(d["training"][1]))), "case_001",
           "dataset.json", "duplicate case id"),
    Defect("case_id_dotdot", _json(_add_entry("./imagesTr/../evil.nii.gz")), "../evil", "dataset.json",
           "not a safe file name (contains '..'"),
    Defect("case_id_absolute", _json(_add_entry("/etc/evil.nii.gz")), "/etc/evil", "dataset.json", "absolute path"),
    Defect("case_id_control_char", _json(_add_entry("./imagesTr/bad\nname.nii.gz")), "bad\\nname", "dataset.json",
           "control characters"),
    Defect("label_entry_other_case",
           _json(lambda d: d["training"][1].update(label="./labelsTr/case_002.nii.gz")), "case_001",
           "dataset.json", "names another case"),
    Defect("no_training_cases", _json(lambda d: d.update(training=[], numTraining=0)), None, "dataset.json",
           "no labelled training cases"),
    Defect("imagesTs_missing", _delete("imagesTs"), None, "imagesTs/", "folder missing"),
    Defect("test_modality_missing", _delete(_image("test_001", 1, "imagesTs")), "test_001",
           _image("test_001", 1, "imagesTs"), "missing"),
    Defect("test_geometry_mismatch", _rewrite_image(_image("test_000", 1, "imagesTs"), spacing=(2.0, 1.0, 1.0)),
           "test_000", _image("test_000", 1, "imagesTs"), "spacing"),
    Defect("test_stray", _copy(_image("test_000", 0, "imagesTs"), _image("test_777", 0, "imagesTs")), "test_777",
           _image("test_777", 0, "imagesTs"), "stray file"),
]
