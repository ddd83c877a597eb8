"""Models of a raw dataset's ``dataset.json`` (MSD layout and nnU-Net v1 ``TaskXXX_NAME`` layout) and task names.

``dataset.json`` is a format fixed by the Medical Segmentation Decathlon and nnU-Net v1, so it is not a versioned
:class:`~stages.documents.Document`: it is read and written in exactly that format. Keys of ``modality`` and
``labels`` are integers written as strings (``{"0": "MRI"}``); training entries name the image without the
modality suffix (``./imagesTr/<case>.nii.gz``). The release field is spelled ``relase`` in the MSD files; both
spellings are accepted and ``release`` is written.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from stages.documents import write_json_atomic
from stages.errors import BadInputError, DatasetError
from stages.imageio import strip_image_suffix

DATASET_JSON = "dataset.json"

_TASK_RE = re.compile(r"^Task(\d{2,3})_([A-Za-z0-9][A-Za-z0-9_.\-]*)$")


class TrainingEntry(BaseModel):
    """One labelled case of ``dataset.json["training"]``.

    Attributes:
        image: Image path relative to the dataset folder without modality suffix (``./imagesTr/<case>.nii.gz``).
        label: Label path relative to the dataset folder (``./labelsTr/<case>.nii.gz``).
    """

    model_config = ConfigDict(extra="allow")

    image: str
    label: str


def _check_int_keys(value: dict[str, str], field: str) -> dict[str, str]:
    for key in value:
        if not re.fullmatch(r"\d+", key):
            raise ValueError(f"{field} key {key!r} is not a non-negative integer written as a string")
    return value


class DatasetJson(BaseModel):
    """The content of ``dataset.json``; unknown extra fields are kept and written back.

    Attributes:
        name: Dataset name (e.g. ``Hippocampus``).
        description: Free text.
        reference: Where the data come from.
        licence: Licence of the data.
        release: Release string (read from ``release`` or the MSD spelling ``relase``).
        tensorImageSize: ``"3D"`` or ``"4D"`` (informative only).
        modality: Channel index (as string) -> modality name; ``"CT"`` selects CT normalization.
        labels: Label value (as string) -> class name; ``"0"`` is the background.
        numTraining: Declared number of training cases (informative; the list is authoritative).
        numTest: Declared number of test cases (informative).
        training: Labelled cases.
        test: Test images (``./imagesTs/<case>.nii.gz``).
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = ""
    description: str = ""
    reference: str = ""
    licence: str = ""
    release: str = Field(default="", validation_alias=AliasChoices("release", "relase"))
    tensorImageSize: str = ""
    modality: dict[str, str]
    labels: dict[str, str]
    numTraining: int | None = None
    numTest: int | None = None
    training: list[TrainingEntry] = Field(default_factory=list)
    test: list[str] = Field(default_factory=list)

    @field_validator("modality")
    @classmethod
    def _modality_keys(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("modality must declare at least one channel")
        return _check_int_keys(value, "modality")

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("labels must declare at least the background")
        return _check_int_keys(value, "labels")

    @field_validator("test", mode="before")
    @classmethod
    def _test_entries(cls, value: Any) -> Any:
        # A few converters write test entries as {"image": path}; accept both forms.
        if isinstance(value, list):
            return [v["image"] if isinstance(v, dict) and "image" in v else v for v in value]
        return value

    @property
    def num_modalities(self) -> int:
        """Number of image channels declared in ``modality``."""
        return len(self.modality)

    @property
    def label_values(self) -> list[int]:
        """Declared label values as sorted ints."""
        return sorted(int(k) for k in self.labels)

    @property
    def modality_indices(self) -> list[int]:
        """Declared channel indices as sorted ints."""
        return sorted(int(k) for k in self.modality)

    def case_ids(self) -> list[str]:
        """Case ids of the training list, in list order (duplicates kept, for the verifier to report)."""
        return [case_id_from_entry(e.image, "imagesTr") for e in self.training]

    def test_case_ids(self) -> list[str]:
        """Case ids of the test list, in list order."""
        return [case_id_from_entry(e, "imagesTs") for e in self.test]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object in the nnU-Net format (``release`` spelled correctly, extra fields kept)."""
        return self.model_dump(mode="json", exclude_none=True)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``dataset.json`` atomically."""
        return write_json_atomic(path, self.to_dict(), indent=4)


def case_id_from_entry(entry: str, folder: str) -> str:
    """Case id of a ``dataset.json`` path entry: ``./imagesTr/la_003.nii.gz`` -> ``la_003``.

    The leading ``./`` and ``<folder>/`` are removed, then the image suffix. Nothing else is removed, so an
    entry that escapes the folder (``./imagesTr/../x.nii.gz``) gives an id with a path separator in it, which
    :func:`unsafe_case_id_reason` rejects.

    Args:
        entry: Path as written in ``dataset.json``.
        folder: Expected folder (``imagesTr``, ``labelsTr`` or ``imagesTs``).
    """
    rest = entry
    while rest.startswith("./"):
        rest = rest[2:]
    if rest.startswith(folder + "/"):
        rest = rest[len(folder) + 1 :]
    return strip_image_suffix(rest)


def unsafe_case_id_reason(case_id: str) -> str | None:
    """Why ``case_id`` cannot be used as a file name inside the dataset folder, or None if it is safe."""
    if not case_id:
        return "empty case id"
    if case_id.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", case_id):
        return "absolute path"
    if "/" in case_id or "\\" in case_id:
        if ".." in re.split(r"[\\/]", case_id):
            return "contains '..' and a path separator"
        return "contains a path separator"
    if case_id in (".", ".."):
        return f"is {case_id!r}"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in case_id):
        return "contains control characters"
    if case_id.startswith("."):
        return "starts with '.' (a hidden file name)"
    return None


def load_dataset_json(path: str | os.PathLike) -> DatasetJson:
    """Read and validate a ``dataset.json``.

    Args:
        path: The file, or the dataset folder holding it.

    Raises:
        DatasetError: The file is missing, not JSON, or not a valid dataset description (message names the
            file and every invalid field).
    """
    path = Path(path)
    if path.is_dir():
        path = path / DATASET_JSON
    if not path.is_file():
        raise DatasetError(f"{path}: dataset.json not found")
    try:
        raw = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: dataset.json is not valid JSON ({exc})") from exc
    return parse_dataset_json(raw, source=str(path))


def parse_dataset_json(raw: Any, source: str = DATASET_JSON) -> DatasetJson:
    """Validate an already parsed ``dataset.json`` object; errors name ``source`` and each invalid field."""
    if not isinstance(raw, dict):
        raise DatasetError(f"{source}: dataset.json must hold a JSON object, not {type(raw).__name__}")
    try:
        return DatasetJson.model_validate(raw)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise DatasetError(f"{source}: invalid dataset.json: {details}") from exc


class TaskName(BaseModel):
    """A task folder name ``TaskXXX_NAME`` (``Task04_Hippocampus`` in MSD, ``Task004_Hippocampus`` in nnU-Net).

    Attributes:
        task_id: Numeric id (0..999).
        name: Dataset name after the underscore.
    """

    model_config = ConfigDict(frozen=True)

    task_id: int = Field(ge=0, le=999)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

    @classmethod
    def parse(cls, text: str | os.PathLike) -> TaskName:
        """Parse ``Task04_Hippocampus``, ``Task004_Hippocampus`` or a path ending in such a folder.

        Raises:
            DatasetError: The name does not have the form ``Task<2 or 3 digits>_<name>``.
        """
        base = Path(os.fspath(text).rstrip("/")).name
        match = _TASK_RE.match(base)
        if not match:
            raise DatasetError(
                f"{text}: not a task folder name (expected Task<id>_<Name>, e.g. Task04_Hippocampus)"
            )
        return cls(task_id=int(match.group(1)), name=match.group(2))

    def with_id(self, task_id: int) -> TaskName:
        """The same name with another id.

        Raises:
            BadInputError: ``task_id`` is outside 0..999.
        """
        if not 0 <= int(task_id) <= 999:
            raise BadInputError(f"task id {task_id} is outside 0..999")
        return TaskName(task_id=int(task_id), name=self.name)

    def format(self) -> str:
        """nnU-Net v1 spelling with a 3-digit id: ``Task004_Hippocampus``."""
        return f"Task{self.task_id:03d}_{self.name}"

    def __str__(self) -> str:
        return self.format()
