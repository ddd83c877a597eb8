"""File naming of the nnU-Net v1 raw layout (``TaskXXX_NAME/{imagesTr,labelsTr,imagesTs}``).

One 3D file per case and modality, ``imagesTr/<case>_XXXX<suffix>`` with ``XXXX`` the zero-padded modality
index, and one label map ``labelsTr/<case><suffix>``; ``imagesTs`` is named like ``imagesTr``. The suffix may be
any format :mod:`stages.imageio` supports (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha`` ...). Names starting with
``.`` (macOS ``._*`` resource forks, temporary files) are not part of a dataset and are ignored everywhere.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from stages.imageio import has_image_suffix, image_suffix, strip_image_suffix

IMAGES_TR = "imagesTr"
LABELS_TR = "labelsTr"
IMAGES_TS = "imagesTs"
DEFAULT_SUFFIX = ".nii.gz"
MODALITY_DIGITS = 4

_MODALITY_RE = re.compile(r"^(?P<case>.+)_(?P<modality>\d{4})$")


def is_hidden(name: str) -> bool:
    """True for names the layout ignores (dot files such as ``._case.nii.gz`` or ``.nnkube-tmp-*``)."""
    return name.startswith(".")


def modality_file_name(case_id: str, modality: int, suffix: str = DEFAULT_SUFFIX) -> str:
    """``("la_003", 1)`` -> ``la_003_0001.nii.gz``."""
    return f"{case_id}_{modality:0{MODALITY_DIGITS}d}{suffix}"


def label_file_name(case_id: str, suffix: str = DEFAULT_SUFFIX) -> str:
    """``la_003`` -> ``la_003.nii.gz``."""
    return f"{case_id}{suffix}"


def image_file_names(case_id: str, n_modalities: int, suffix: str = DEFAULT_SUFFIX) -> list[str]:
    """File names of all modalities of one case, in modality order."""
    return [modality_file_name(case_id, m, suffix) for m in range(n_modalities)]


def split_image_file_name(name: str) -> tuple[str, int] | None:
    """``la_003_0001.nii.gz`` -> ``("la_003", 1)``; None for non-images or names without ``_XXXX``."""
    if not has_image_suffix(name):
        return None
    match = _MODALITY_RE.match(strip_image_suffix(name))
    if not match:
        return None
    return match.group("case"), int(match.group("modality"))


def visible_entries(folder: str | os.PathLike) -> list[str]:
    """Sorted names in ``folder`` that are not hidden (empty if the folder does not exist)."""
    try:
        return sorted(n for n in os.listdir(folder) if not is_hidden(n))
    except FileNotFoundError:
        return []


def list_image_files(folder: str | os.PathLike) -> list[str]:
    """Sorted names of the visible image files in ``folder``."""
    return [n for n in visible_entries(folder) if has_image_suffix(n) and (Path(folder) / n).is_file()]


def list_case_ids(folder: str | os.PathLike) -> list[str]:
    """Sorted unique case ids of an ``imagesTr``/``imagesTs`` folder (``_XXXX`` and the suffix stripped)."""
    ids = {parsed[0] for parsed in map(split_image_file_name, list_image_files(folder)) if parsed}
    return sorted(ids)


def list_label_case_ids(folder: str | os.PathLike) -> list[str]:
    """Sorted case ids of a ``labelsTr`` folder (the suffix stripped)."""
    return sorted({strip_image_suffix(n) for n in list_image_files(folder)})


def expected_training_files(
    case_id: str, n_modalities: int, suffix: str = DEFAULT_SUFFIX
) -> tuple[list[str], str]:
    """Relative paths ``(images, label)`` of one training case: ``imagesTr/<case>_XXXX``, ``labelsTr/<case>``."""
    images = [f"{IMAGES_TR}/{n}" for n in image_file_names(case_id, n_modalities, suffix)]
    return images, f"{LABELS_TR}/{label_file_name(case_id, suffix)}"


def expected_test_files(case_id: str, n_modalities: int, suffix: str = DEFAULT_SUFFIX) -> list[str]:
    """Relative paths of the modalities of one test case (``imagesTs/<case>_XXXX``)."""
    return [f"{IMAGES_TS}/{n}" for n in image_file_names(case_id, n_modalities, suffix)]


def suffix_of_entry(entry: str) -> str:
    """The image suffix a ``dataset.json`` entry uses (``.nii.gz`` when it names none)."""
    return image_suffix(entry) if has_image_suffix(entry) else DEFAULT_SUFFIX


@dataclass
class FolderIndex:
    """The visible files of one layout folder, indexed by name without suffix.

    Lets a caller find ``<stem>`` in any supported format, notice when the same stem exists in several formats,
    and list what no case claimed (stray files).

    Attributes:
        folder: The folder scanned.
        exists: Whether it is a directory.
        names: Visible entry names.
        by_stem: Stem (name without image suffix) -> image file names with that stem.
        claimed: Names :meth:`find` has returned so far.
    """

    folder: Path
    exists: bool
    names: list[str]
    by_stem: dict[str, list[str]]
    claimed: set[str] = field(default_factory=set)

    @classmethod
    def scan(cls, folder: str | os.PathLike) -> FolderIndex:
        """Index ``folder`` (an absent folder gives an empty index with ``exists=False``)."""
        folder = Path(folder)
        names = visible_entries(folder)
        by_stem: dict[str, list[str]] = {}
        for name in names:
            if has_image_suffix(name):
                by_stem.setdefault(strip_image_suffix(name), []).append(name)
        return cls(folder=folder, exists=folder.is_dir(), names=names, by_stem=by_stem)

    def find(self, stem: str) -> list[str]:
        """Image file names with this stem (any supported suffix), marking them as claimed."""
        found = self.by_stem.get(stem, [])
        self.claimed.update(found)
        return list(found)

    def unclaimed(self) -> list[str]:
        """Visible names no :meth:`find` call returned, sorted."""
        return [n for n in self.names if n not in self.claimed]
