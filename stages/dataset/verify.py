"""Integrity check of a raw dataset in the nnU-Net v1 layout; every problem found is reported, nothing is written.

The checks cover what nnU-Net's ``verify_dataset_integrity`` asserts (dataset.json and folders present, no
duplicate or missing cases, no stray files, matching geometry, no NaN, declared and consecutive labels, test
images complete) and what it misses: unreadable, empty and truncated files (a truncated ``.nii.gz`` reads
without error in SimpleITK, so gzip streams are checked on their own), Inf values, non-integer label values,
4D or vector images, case ids that are not safe file names, and an empty training set. Unlike nnU-Net, the
check never stops at the first problem: it returns a :class:`VerificationReport` with one line per case, file
and problem. Files are read in a bounded thread pool.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydantic import BaseModel, ConfigDict

from stages.documents import Document
from stages.errors import BadInputError, DatasetError
from stages.imageio import Geometry, has_image_suffix, read_sitk, strip_image_suffix
from stages.resources import default_workers

from .layout import (
    DEFAULT_SUFFIX,
    IMAGES_TR,
    IMAGES_TS,
    LABELS_TR,
    FolderIndex,
    label_file_name,
    list_label_case_ids,
    modality_file_name,
    split_image_file_name,
    suffix_of_entry,
)
from .models import DATASET_JSON, DatasetJson, case_id_from_entry, load_dataset_json, unsafe_case_id_reason
from .nifti_scan import NiftiScanError, is_nifti, scan_nifti

log = logging.getLogger(__name__)


class Problem(BaseModel):
    """One finding: which case, which file (relative to the dataset folder), what is wrong.

    Attributes:
        case: Case id, or None for a dataset-level problem.
        file: File or folder relative to the dataset folder, or None when no single file is concerned.
        problem: What is wrong, in words.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    case: str | None = None
    file: str | None = None
    problem: str

    def line(self) -> str:
        """``case: file: problem`` with ``-`` for a missing case or file."""
        return f"{self.case or '-'}: {self.file or '-'}: {self.problem}"


class VerificationReport(Document):
    """Result of :func:`verify_dataset`.

    Attributes:
        dataset: The dataset checked (path or URI as given).
        num_training_cases: Training cases expected (from dataset.json, else from the files).
        num_test_cases: Test cases listed in dataset.json.
        num_modalities: Modalities expected per case.
        num_files_checked: Image files read.
        problems: Everything that makes the dataset unusable; empty when it passes.
        warnings: Findings that do not fail the check (e.g. mixed orientations, wrong numTraining).
    """

    KIND = "verification_report"
    SCHEMA_VERSION = 1

    dataset: str
    num_training_cases: int = 0
    num_test_cases: int = 0
    num_modalities: int = 0
    num_files_checked: int = 0
    problems: list[Problem] = []
    warnings: list[Problem] = []

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def cases_with_problems(self) -> list[str]:
        """Sorted ids of the cases named by at least one problem."""
        return sorted({p.case for p in self.problems if p.case})


def format_report(report: VerificationReport) -> str:
    """The report for people: one ``case: file: problem`` line per problem and warning, then a summary."""
    lines = [f"verify {report.dataset}"]
    lines += [f"PROBLEM {p.line()}" for p in report.problems]
    lines += [f"WARNING {w.line()}" for w in report.warnings]
    counts = (
        f"{report.num_training_cases} training cases, {report.num_test_cases} test cases, "
        f"{report.num_modalities} modalities, {report.num_files_checked} files read"
    )
    if report.ok:
        lines.append(f"OK: no problems ({counts}, {len(report.warnings)} warnings)")
    else:
        lines.append(
            f"FAILED: {len(report.problems)} problems in {len(report.cases_with_problems)} cases ({counts})"
        )
    return "\n".join(lines)


@dataclass
class _Findings:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def add(self, case: str | None, file: str | None, problem: str) -> None:
        self.problems.append(Problem(case=_printable(case), file=_printable(file), problem=problem))

    def warn(self, case: str | None, file: str | None, problem: str) -> None:
        self.warnings.append(Problem(case=_printable(case), file=_printable(file), problem=problem))

    def extend(self, other: _Findings) -> None:
        self.problems += other.problems
        self.warnings += other.warnings


def _printable(text: str | None) -> str | None:
    """Control characters escaped so one problem stays one line."""
    if text is None or text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")


@dataclass
class _CaseFiles:
    """The files of one case to read (relative paths); ``label`` is None for test cases or a missing label."""

    case: str
    images: list[str]
    label: str | None = None


@dataclass
class _Expected:
    n_modalities: int
    labels: list[int] | None
    training: list[str]
    test: list[str]
    suffix: str = DEFAULT_SUFFIX


def verify_dataset(
    folder: str | os.PathLike, workers: int | None = None, source: str | None = None
) -> VerificationReport:
    """Check a raw dataset folder and report every problem; never writes anything.

    Args:
        folder: The task folder (``dataset.json``, ``imagesTr``, ``labelsTr``, optional ``imagesTs``).
        workers: Parallel readers (default: available CPUs, at most 8, or ``nnUNet_def_n_proc``).
        source: Name of the dataset in the report (default: ``folder``), e.g. the S3 URI it came from.

    Returns:
        The report; ``report.ok`` is True when no problem was found.
    """
    root = Path(folder)
    found = _Findings()
    report = VerificationReport(dataset=source or str(folder))
    if not root.is_dir():
        found.add(None, None, f"dataset folder {folder} not found")
        return report.model_copy(update={"problems": found.problems})
    dj = _load_json(root, found)
    images_tr, labels_tr = FolderIndex.scan(root / IMAGES_TR), FolderIndex.scan(root / LABELS_TR)
    for index in (images_tr, labels_tr):
        if not index.exists:
            found.add(None, index.folder.name + "/", "folder missing")
    expected = _expected_from_json(dj, found) if dj else _expected_from_files(images_tr, labels_tr)
    if not expected.training:
        found.add(None, DATASET_JSON if dj else LABELS_TR + "/", "no labelled training cases")

    jobs = [_claim_training(case, expected, images_tr, labels_tr, found) for case in expected.training]
    _report_strays(images_tr, set(expected.training), expected.n_modalities, found, "training")
    _report_strays(labels_tr, set(expected.training), None, found, "training")
    if expected.test:
        images_ts = FolderIndex.scan(root / IMAGES_TS)
        if not images_ts.exists:
            found.add(None, IMAGES_TS + "/", f"folder missing; dataset.json lists {len(expected.test)} test cases")
        else:
            jobs += [_claim_test(case, expected, images_ts, found) for case in expected.test]
            _report_strays(images_ts, set(expected.test), expected.n_modalities, found, "test")

    n_workers = max(1, workers or default_workers("nnUNet_def_n_proc", cap=8))
    orientations: dict[str, str] = {}
    n_read = 0
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        for case_found, case_orient, case_read in pool.map(lambda j: _check_case(root, j, expected), jobs):
            found.extend(case_found)
            orientations.update(case_orient)
            n_read += case_read
    _warn_orientations(orientations, found)
    log.info("verified %s: %d problems, %d files read", report.dataset, len(found.problems), n_read)
    return report.model_copy(
        update={
            "num_training_cases": len(expected.training),
            "num_test_cases": len(expected.test),
            "num_modalities": expected.n_modalities,
            "num_files_checked": n_read,
            "problems": sorted(found.problems, key=_sort_key),
            "warnings": sorted(found.warnings, key=_sort_key),
        }
    )


def _sort_key(p: Problem) -> tuple:
    return (p.case is not None, p.case or "", p.file or "", p.problem)


def _load_json(root: Path, found: _Findings) -> DatasetJson | None:
    try:
        return load_dataset_json(root / DATASET_JSON)
    except DatasetError as exc:
        message = str(exc)
        prefix = f"{root / DATASET_JSON}: "
        found.add(None, DATASET_JSON, message[len(prefix) :] if message.startswith(prefix) else message)
        return None


def _consecutive(values: list[int]) -> bool:
    return values == list(range(len(values)))


def _expected_from_json(dj: DatasetJson, found: _Findings) -> _Expected:
    """Cases, modalities and labels declared in dataset.json; reports what is wrong with the declaration."""
    if not _consecutive(dj.label_values):
        found.add(None, DATASET_JSON, f"labels keys {dj.label_values} are not consecutive integers from 0")
    if not _consecutive(dj.modality_indices):
        found.add(None, DATASET_JSON, f"modality keys {dj.modality_indices} are not consecutive integers from 0")
    for key, declared, actual in (("numTraining", dj.numTraining, len(dj.training)),
                                  ("numTest", dj.numTest, len(dj.test))):
        if declared is not None and declared != actual:
            found.warn(None, DATASET_JSON, f"{key} is {declared} but the list has {actual} entries")
    training = []
    for i, entry in enumerate(dj.training):
        case = case_id_from_entry(entry.image, IMAGES_TR)
        label_case = case_id_from_entry(entry.label, LABELS_TR)
        if label_case != case:
            found.add(case, DATASET_JSON, f"training[{i}]: label entry {entry.label!r} names another case "
                      f"({label_case!r}) than the image entry {entry.image!r}")
        training.append(case)
    test = [case_id_from_entry(e, IMAGES_TS) for e in dj.test]
    suffix = suffix_of_entry(dj.training[0].image) if dj.training else DEFAULT_SUFFIX
    return _Expected(
        n_modalities=dj.num_modalities,
        labels=dj.label_values,
        training=_usable_ids(training, "training", found),
        test=_usable_ids(test, "test", found),
        suffix=suffix,
    )


def _usable_ids(ids: list[str], listname: str, found: _Findings) -> list[str]:
    """Unique, safe case ids in list order; duplicates and unsafe ids are reported and dropped."""
    counts = Counter(ids)
    out, seen = [], set()
    for case in ids:
        if case in seen:
            continue
        seen.add(case)
        if counts[case] > 1:
            found.add(case, DATASET_JSON, f"duplicate case id: listed {counts[case]} times in {listname}")
        reason = unsafe_case_id_reason(case)
        if reason:
            found.add(case, DATASET_JSON, f"case id {case!r} in {listname} is not a safe file name ({reason})")
            continue
        out.append(case)
    return out


def _expected_from_files(images_tr: FolderIndex, labels_tr: FolderIndex) -> _Expected:
    """Without a usable dataset.json: the cases and modalities the files themselves suggest."""
    parsed = [p for p in map(split_image_file_name, images_tr.names) if p]
    cases = sorted({c for c, _ in parsed} | set(list_label_case_ids(labels_tr.folder)))
    n_mod = max((m for _, m in parsed), default=0) + 1
    return _Expected(n_modalities=n_mod, labels=None, training=cases, test=[])


def _find_one(index: FolderIndex, stem: str, case: str, missing_name: str, what: str, found: _Findings) -> str | None:
    """Relative path of the file ``stem`` in ``index`` or None (reporting a missing or ambiguous file)."""
    names = index.find(stem)
    folder = index.folder.name
    if not names:
        if index.exists:  # a missing folder is reported once, not once per file
            found.add(case, f"{folder}/{missing_name}", f"{what} missing")
        return None
    if len(names) > 1:
        found.add(case, f"{folder}/{names[0]}", f"{what} exists in several formats: {', '.join(names)}")
    return f"{folder}/{names[0]}"


def _claim_images(case: str, exp: _Expected, index: FolderIndex, found: _Findings) -> list[str]:
    out = []
    for m in range(exp.n_modalities):
        stem = modality_file_name(case, m, suffix="")
        rel = _find_one(index, stem, case, stem + exp.suffix, f"image of modality {m}", found)
        if rel:
            out.append(rel)
    return out


def _claim_training(case: str, exp: _Expected, images: FolderIndex, labels: FolderIndex,
                    found: _Findings) -> _CaseFiles:
    label = _find_one(labels, case, case, label_file_name(case, exp.suffix), "label file", found)
    return _CaseFiles(case, _claim_images(case, exp, images, found), label)


def _claim_test(case: str, exp: _Expected, images: FolderIndex, found: _Findings) -> _CaseFiles:
    return _CaseFiles(case, _claim_images(case, exp, images, found), None)


def _report_strays(index: FolderIndex, cases: set[str], n_modalities: int | None, found: _Findings,
                   listname: str) -> None:
    """Report every visible entry of ``index`` no case claimed (``n_modalities`` None: a label folder)."""
    folder = index.folder.name
    for name in index.unclaimed():
        rel = f"{folder}/{name}"
        parsed = split_image_file_name(name)
        if (index.folder / name).is_dir():
            found.add(None, rel + "/", "unexpected folder")
        elif not has_image_suffix(name):
            found.add(None, rel, "stray file: not an image file")
        elif n_modalities is None:
            found.add(strip_image_suffix(name), rel, f"stray label file: case not listed in dataset.json {listname}")
        elif parsed is None and strip_image_suffix(name) in cases:
            found.add(strip_image_suffix(name), rel, "stray file: an MSD-style image without the _XXXX modality "
                      "suffix (convert the task with nnUNet_convert_decathlon_task first)")
        elif parsed is None:
            found.add(None, rel, "stray file: name lacks the _XXXX modality suffix")
        elif parsed[0] in cases:
            plural = "modality" if n_modalities == 1 else "modalities"
            found.add(parsed[0], rel, f"modality {parsed[1]} is not declared in dataset.json ({n_modalities} {plural})")
        else:
            found.add(parsed[0], rel, f"stray file: case not listed in dataset.json {listname}")


def _check_case(root: Path, job: _CaseFiles, exp: _Expected) -> tuple[_Findings, dict[str, str], int]:
    """Read every file of one case and check it; returns findings, orientation per imagesTr file, files read."""
    found = _Findings()
    loaded: dict[str, sitk.Image] = {}
    nonfinite: dict[str, tuple[int, int] | None] = {}
    for rel in ([job.label] if job.label else []) + job.images:
        image, counts = _read_checked(root, rel, job.case, found)
        if image is not None:
            loaded[rel], nonfinite[rel] = image, counts
    for rel in job.images:
        if rel in loaded:
            _check_image_values(loaded[rel], rel, job.case, nonfinite[rel], found)
    if job.label in loaded:
        _check_label_values(loaded[job.label], job.label, job.case, exp.labels, nonfinite[job.label], found)
    _check_geometry(job, loaded, found)
    orientations = {
        rel: sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection())
        for rel, img in loaded.items()
        if rel.startswith(IMAGES_TR + "/")
    }
    return found, orientations, len(loaded)


def _read_checked(
    root: Path, rel: str, case: str, found: _Findings
) -> tuple[sitk.Image | None, tuple[int, int] | None]:
    """Read one file, reporting an empty, corrupt, unreadable, non-3D or vector image (then ``None``).

    Returns:
        The image and, for NIfTI files, the ``(NaN, Inf)`` voxel counts of the raw bytes (SimpleITK reads
        non-finite NIfTI voxels as 0, so they must be counted on disk); None for other formats.
    """
    path = root / rel
    counts = None
    try:
        if path.stat().st_size == 0:
            found.add(case, rel, "empty file (0 bytes)")
            return None, None
        if is_nifti(path):
            scan = scan_nifti(path)
            counts = (scan.nan, scan.inf)
    except NiftiScanError as exc:
        found.add(case, rel, f"cannot read image ({exc})")
        return None, None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        found.add(case, rel, f"corrupt or truncated gzip data ({exc})")
        return None, None
    except OSError as exc:
        found.add(case, rel, f"cannot read file ({exc.strerror or exc})")
        return None, None
    try:
        image = read_sitk(path)
    except BadInputError as exc:
        found.add(case, rel, str(exc).replace(f"{path}: ", "", 1))
        return None, None
    dim, comps = image.GetDimension(), image.GetNumberOfComponentsPerPixel()
    if dim != 3:
        what = "4D image where a 3D image is expected" if dim == 4 else f"{dim}D image; expected a 3D image"
        found.add(case, rel, f"{what} (size {tuple(image.GetSize())})")
        return None, None
    if comps != 1:
        found.add(case, rel, f"{comps} components per voxel; expected one scalar per voxel")
        return None, None
    return image, counts


def _nonfinite(array: np.ndarray, counts: tuple[int, int] | None) -> tuple[int, int]:
    if counts is not None:
        return counts
    if not np.issubdtype(array.dtype, np.floating):
        return 0, 0
    return int(np.isnan(array).sum()), int(np.isinf(array).sum())


def _check_image_values(image: sitk.Image, rel: str, case: str, counts: tuple[int, int] | None,
                        found: _Findings) -> None:
    n_nan, n_inf = _nonfinite(sitk.GetArrayViewFromImage(image), counts)
    if n_nan or n_inf:
        found.add(case, rel, f"contains non-finite values ({n_nan} NaN, {n_inf} Inf voxels)")


def _check_label_values(image: sitk.Image, rel: str, case: str, declared: list[int] | None,
                        counts: tuple[int, int] | None, found: _Findings) -> None:
    array = sitk.GetArrayViewFromImage(image)
    n_nan, n_inf = _nonfinite(array, counts)
    if n_nan or n_inf:
        found.add(case, rel, f"label map contains non-finite values ({n_nan} NaN, {n_inf} Inf voxels)")
    if np.issubdtype(array.dtype, np.floating):
        array = array[np.isfinite(array)]
        fractional = array[array != np.round(array)]
        if fractional.size:
            examples = ", ".join(f"{v:g}" for v in np.unique(fractional)[:3])
            found.add(case, rel, f"non-integer label values ({fractional.size} voxels, e.g. {examples})")
            array = array[array == np.round(array)]
    if declared is None:
        return
    present = [int(v) for v in np.unique(array)]
    undeclared = sorted(set(present) - set(declared))
    if undeclared:
        found.add(case, rel, f"label values {undeclared} are not declared in dataset.json labels {declared}")


def _check_geometry(job: _CaseFiles, loaded: dict[str, sitk.Image], found: _Findings) -> None:
    """Compare every image with the label (or, without a readable label, with the first readable image)."""
    order = ([job.label] if job.label else []) + job.images
    readable = [rel for rel in order if rel in loaded]
    if len(readable) < 2:
        return
    ref = readable[0]
    ref_geometry = Geometry.of(loaded[ref])
    for rel in readable[1:]:
        mismatches = Geometry.of(loaded[rel]).mismatches(ref_geometry)
        if mismatches:
            found.add(job.case, rel, f"geometry does not match {ref}: " + "; ".join(mismatches))


def _warn_orientations(orientations: dict[str, str], found: _Findings) -> None:
    counts = Counter(orientations.values())
    if len(counts) <= 1:
        return
    parts = []
    for code, n in counts.most_common():
        example = next(rel for rel, c in sorted(orientations.items()) if c == code)
        parts.append(f"{code}: {n} files (e.g. {example})")
    found.warn(None, IMAGES_TR + "/", "images have different orientations: " + "; ".join(parts))
