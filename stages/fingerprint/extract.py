"""Extract the dataset fingerprint from a raw task folder (spec §2.1, §2.2).

Every training case is read, cropped to its nonzero region and summarized (shapes, spacing, size reduction,
every 10th foreground voxel per modality) in a bounded pool of worker processes; the parent pools the
foreground samples into dataset-wide intensity statistics. A worker killed by the OS (for example out of
memory) ends the run with an error naming the unfinished cases instead of hanging.

Accepted layouts: nnU-Net v1 (``imagesTr/<case>_0000.nii.gz`` ...) and, for single-modality datasets, the MSD
layout (``imagesTr/<case>.nii.gz``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.dataset.layout import IMAGES_TR, LABELS_TR, label_file_name, modality_file_name, suffix_of_entry
from stages.dataset.models import DatasetJson, load_dataset_json, unsafe_case_id_reason
from stages.errors import DatasetError, NnkubeError
from stages.fingerprint.models import FOREGROUND_SAMPLING_STEP, CaseFingerprint, Fingerprint
from stages.plan.models import IntensityStats
from stages.preprocess.cropping import load_and_crop_case
from stages.workers import map_cases

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseFiles:
    """Input files of one training case."""

    case_id: str
    image_files: list[str]
    label_file: str


def compute_stats(voxels: np.ndarray) -> IntensityStats:
    """Median, mean, population sd, min, max and 99.5/0.5 linear percentiles; NaN for no voxels."""
    if voxels.size == 0:
        nan = float("nan")
        return IntensityStats(mean=nan, sd=nan, median=nan, mn=nan, mx=nan, percentile_99_5=nan,
                              percentile_00_5=nan)
    return IntensityStats(
        mean=float(np.mean(voxels)), sd=float(np.std(voxels)), median=float(np.median(voxels)),
        mn=float(np.min(voxels)), mx=float(np.max(voxels)), percentile_99_5=float(np.percentile(voxels, 99.5)),
        percentile_00_5=float(np.percentile(voxels, 0.5)),
    )


def find_case_files(task_dir: str | Path, dataset: DatasetJson | None = None) -> list[CaseFiles]:
    """The image and label files of every training case listed in ``dataset.json``, sorted by case id.

    Raises:
        DatasetError: Naming every case with an unsafe id or a missing file.
    """
    task_dir = Path(task_dir)
    dataset = dataset or load_dataset_json(task_dir)
    modalities = dataset.modality_indices
    if modalities != list(range(len(modalities))):
        raise DatasetError(f"{task_dir}/dataset.json: modality keys must be 0..{len(modalities) - 1}, got {modalities}")
    problems, cases = [], []
    for entry, case_id in zip(dataset.training, dataset.case_ids()):
        reason = unsafe_case_id_reason(case_id)
        if reason:
            problems.append(f"case {case_id!r}: {reason}")
            continue
        suffix = suffix_of_entry(entry.image)
        v1 = [task_dir / IMAGES_TR / modality_file_name(case_id, m, suffix) for m in modalities]
        msd = task_dir / IMAGES_TR / f"{case_id}{suffix}"
        if all(f.is_file() for f in v1):
            images = v1
        elif len(modalities) == 1 and msd.is_file():
            images = [msd]
        elif msd.is_file():
            problems.append(f"case {case_id}: {msd} is an MSD multi-modal image; convert the task first "
                            "(python -m stages convert)")
            continue
        else:
            missing = ", ".join(str(f) for f in v1 if not f.is_file())
            problems.append(f"case {case_id}: missing image file(s) {missing}")
            continue
        label = task_dir / LABELS_TR / label_file_name(case_id, suffix_of_entry(entry.label))
        if not label.is_file():
            problems.append(f"case {case_id}: missing label file {label}")
            continue
        cases.append(CaseFiles(case_id, [str(f) for f in images], str(label)))
    if problems:
        raise DatasetError(f"{task_dir}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    if not cases:
        raise DatasetError(f"{task_dir}: dataset.json lists no training cases")
    dups = sorted(i for i, n in Counter(c.case_id for c in cases).items() if n > 1)
    if dups:
        raise DatasetError(f"{task_dir}: duplicate training case ids {dups}")
    return sorted(cases, key=lambda c: c.case_id)


def analyze_case(case: CaseFiles, step: int = FOREGROUND_SAMPLING_STEP) -> tuple[CaseFingerprint, list[np.ndarray]]:
    """Crop one case and summarize it (runs in a worker process).

    Returns:
        ``(case fingerprint, per modality every step-th foreground voxel)``.
    """
    data, seg, props = load_and_crop_case(case.image_files, case.label_file)
    foreground = seg[0] > 0
    samples = [np.ascontiguousarray(channel[foreground][::step]) for channel in data]
    before = props["original_size_of_raw_data"]
    after = props["size_after_cropping"]
    fp = CaseFingerprint(
        case_id=case.case_id,
        shape_before_crop=before,
        shape_after_crop=after,
        spacing=props["original_spacing"],
        size_reduction=float(np.prod(after, dtype=np.float64) / np.prod(before, dtype=np.float64)),
        classes=props["classes"],
        intensity={m: compute_stats(s) for m, s in enumerate(samples)},
    )
    return fp, samples


def _analyze(case_id: str, case: CaseFiles, step: int) -> tuple[CaseFingerprint, list[np.ndarray]] | NnkubeError:
    """:func:`analyze_case` in this process or a worker, returning a case's own error instead of raising it.

    An :class:`NnkubeError` (e.g. an unreadable file) is returned so that one run names every failing case.
    """
    try:
        return analyze_case(case, step)
    except NnkubeError as exc:
        return exc
    except Exception as exc:
        raise RuntimeError(f"case {case_id}: fingerprint extraction failed: {exc}") from exc


def extract_fingerprint(task_dir: str | Path, num_processes: int = 1,
                        step: int = FOREGROUND_SAMPLING_STEP) -> Fingerprint:
    """Fingerprint of the training cases of a raw task folder.

    Args:
        task_dir: Folder with ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
        num_processes: Worker processes (1 = in this process).
        step: Keep every ``step``-th foreground voxel for the intensity statistics.

    Raises:
        DatasetError: Missing or unreadable files, naming every failing case.
        WorkerDiedError: A worker process died.
    """
    start = time.monotonic()
    task_dir = Path(task_dir)
    dataset = load_dataset_json(task_dir)
    cases = find_case_files(task_dir, dataset)
    workers = max(1, min(int(num_processes), len(cases)))
    log.info("fingerprinting %d cases of %s with %d process(es)", len(cases), task_dir, workers)
    items = [(c.case_id, (c, step)) for c in cases]
    if workers == 1:
        results = {case_id: _analyze(case_id, *args)
                   for case_id, args in tqdm(items, desc="fingerprint", unit="case", disable=None)}
    else:
        results = map_cases(_analyze, items, workers, desc="fingerprint",
                            hint="use fewer --num-processes or more memory")
    failures = {case_id: str(result) for case_id, result in results.items() if isinstance(result, Exception)}
    if failures:
        lines = "\n  ".join(f"{cid}: {msg}" for cid, msg in sorted(failures.items()))
        raise DatasetError(f"{task_dir}: {len(failures)} case(s) could not be read:\n  {lines}")
    ordered = [results[c.case_id] for c in cases]
    modalities = {int(k): v for k, v in dataset.modality.items()}
    pooled = {}
    for m in sorted(modalities):
        voxels = np.concatenate([samples[m] for _, samples in ordered])
        pooled[m] = compute_stats(voxels)
    fingerprint = Fingerprint(
        dataset_name=dataset.name,
        modalities=dict(sorted(modalities.items())),
        all_classes=[v for v in dataset.label_values if v > 0],
        cases=[fp for fp, _ in ordered],
        intensity_properties=pooled,
        foreground_sampling_step=step,
    )
    log.info("fingerprint of %d cases done in %.1f s; median shape after crop %s, median spacing %s",
             len(cases), time.monotonic() - start,
             np.median(np.vstack(fingerprint.all_sizes), 0).tolist(),
             np.median(np.vstack(fingerprint.all_spacings), 0).tolist())
    return fingerprint
