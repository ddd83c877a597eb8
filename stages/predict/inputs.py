"""Test-time inputs of ``nnUNet_predict``: the case list of an input folder, sharding, background preprocessing.

Input folders use nnU-Net v1's inference layout, one file per case and modality, ``<case>_XXXX<suffix>``
(spec §8.4): every case must have modalities ``0000 .. C-1`` (otherwise :class:`BadInputError` naming the case
and the missing file); other image files (a modality the model does not use, a name without ``_XXXX``) are
only warned about. The sorted case list is sharded ``[part_id::num_parts]``.

Preprocessing (spec §4.6, :func:`~stages.preprocess.preprocessor.preprocess_case` without a label) runs in
background worker processes that stay a bounded number of cases ahead of the consumer, so the network
predicts one case while the next ones are read, cropped, resampled and normalized. A worker killed by the
operating system (e.g. out of memory) ends the run with :class:`~stages.workers.WorkerDiedError`
naming the case. This module does not import torch, so the worker processes stay light.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages import storage
from stages.dataset.layout import is_hidden, modality_file_name, split_image_file_name
from stages.errors import BadInputError
from stages.imageio import has_image_suffix, image_suffix
from stages.listcases.models import split_cases
from stages.preprocess.models import CaseProperties
from stages.preprocess.preprocessor import PreprocessParams, preprocess_case
from stages.resources import default_workers
from stages.workers import CasePool

log = logging.getLogger(__name__)

#: Preprocessed cases larger than this travel from a worker through a temporary ``.npy`` file, not a pipe.
INLINE_LIMIT_BYTES = 256 * 2**20
#: Default of nnU-Net v1's ``--num_threads_preprocessing`` (capped by the CPUs available here).
DEFAULT_PREPROCESS_WORKERS = 6
PREPROCESS_WORKERS_ENV = "NNKUBE_PREPROCESS_WORKERS"
MAX_NAMED = 20  # problems named in one error message


@dataclass(frozen=True)
class InputCase:
    """One case to predict.

    Attributes:
        case_id: Case identifier (file name without ``_XXXX`` and suffix).
        image_files: One file per modality, in modality order.
        suffix: Image suffix of the case's files (the prediction is written with the same suffix).
        prev_stage_file: Cascade only: the 3d_lowres segmentation of the case (original geometry).
    """

    case_id: str
    image_files: tuple[str, ...]
    suffix: str
    prev_stage_file: str | None = None

    def output_name(self) -> str:
        """File name of the case's segmentation: ``<case><suffix>``."""
        return f"{self.case_id}{self.suffix}"


def group_input_files(names: Iterable[str], num_modalities: int, where: str) -> dict[str, dict[int, str]]:
    """Group image file names into cases and check that every case has modalities ``0 .. num_modalities-1``.

    Args:
        names: File names (not paths) found in the input folder; non-image and hidden names are skipped.
        num_modalities: Input modalities of the model.
        where: The folder, for messages.

    Returns:
        ``{case_id: {modality: file name}}`` for the modalities the model uses, cases sorted.

    Raises:
        BadInputError: No case found, or a case lacks a modality (every such case and file is named).
    """
    found: dict[str, dict[int, str]] = {}
    suffixes: dict[str, str] = {}
    extra: list[str] = []
    for name in sorted(names):
        if is_hidden(name) or not has_image_suffix(name):
            continue
        parsed = split_image_file_name(name)
        if parsed is None:
            extra.append(name)
            continue
        case_id, modality = parsed
        mods = found.setdefault(case_id, {})
        suffixes.setdefault(case_id, image_suffix(name))
        if modality >= num_modalities or modality in mods:
            extra.append(name)
            continue
        mods[modality] = name
    problems = []
    for case_id, mods in sorted(found.items()):
        missing = [modality_file_name(case_id, m, suffixes[case_id]) for m in range(num_modalities) if m not in mods]
        if missing:
            problems.append(f"case {case_id}: missing {', '.join(missing)}")
    if problems:
        more = f"; ... and {len(problems) - MAX_NAMED} more" if len(problems) > MAX_NAMED else ""
        raise BadInputError(
            f"{where}: {len(problems)} case(s) lack input files (the model expects modalities "
            f"{', '.join(f'{m:04d}' for m in range(num_modalities))} as <case>_XXXX.nii.gz): "
            + "; ".join(problems[:MAX_NAMED]) + more
        )
    if extra:
        log.warning("%s: %d image file(s) not used by the model (expected <case>_0000..<case>_%04d): %s%s", where,
                    len(extra), num_modalities - 1, ", ".join(extra[:MAX_NAMED]),
                    " ..." if len(extra) > MAX_NAMED else "")
    if not found:
        raise BadInputError(f"{where}: no input images named <case>_0000.nii.gz found")
    return dict(sorted(found.items()))


def list_input_cases(folder: str | os.PathLike, num_modalities: int) -> list[InputCase]:
    """The cases of a local input folder (see :func:`group_input_files`), sorted by case id.

    Raises:
        BadInputError: The folder is missing, holds no case, or a case lacks a modality.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: input folder not found")
    names = [p.name for p in folder.iterdir() if p.is_file()]
    grouped = group_input_files(names, num_modalities, str(folder))
    return [
        InputCase(case_id, tuple(str(folder / mods[m]) for m in range(num_modalities)), image_suffix(mods[0]))
        for case_id, mods in grouped.items()
    ]


def list_input_uris(prefix: str, num_modalities: int) -> dict[str, list[str]]:
    """Like :func:`list_input_cases` for a local folder or ``s3://`` prefix: ``{case: [file URIs]}``."""
    names = [storage.basename(u) for u in storage.list_prefix(prefix, recursive=False) if not u.endswith("/")]
    grouped = group_input_files(names, num_modalities, prefix)
    return {case: [storage.join(prefix, mods[m]) for m in range(num_modalities)] for case, mods in grouped.items()}


def check_shard(part_id: int, num_parts: int) -> None:
    """Raise BadInputError unless ``0 <= part_id < num_parts``."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise BadInputError(f"part_id {part_id} / num_parts {num_parts}: need num_parts >= 1 and "
                            f"0 <= part_id < num_parts")


def shard_case_ids(case_ids: Sequence[str], part_id: int, num_parts: int) -> list[str]:
    """Shard ``part_id`` of ``num_parts``: ``sorted(case_ids)[part_id::num_parts]`` (nnU-Net's ``--part_id``)."""
    check_shard(part_id, num_parts)
    return split_cases(list(case_ids), num_parts)[part_id]


def find_prev_stage_files(cases: Sequence[InputCase], folder: str | os.PathLike) -> list[InputCase]:
    """Attach each case's previous-stage (3d_lowres) segmentation ``<folder>/<case><suffix>``.

    Raises:
        BadInputError: The folder is missing or a case has no segmentation there (every case named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: folder of low-resolution segmentations not found")
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and has_image_suffix(path.name) and not is_hidden(path.name):
            by_stem.setdefault(path.name[: -len(image_suffix(path.name))], path)
    missing = [c.case_id for c in cases if c.case_id not in by_stem]
    if missing:
        raise BadInputError(f"{folder}: no low-resolution segmentation (<case>.nii.gz) for case(s) "
                            f"{', '.join(missing[:MAX_NAMED])}{' ...' if len(missing) > MAX_NAMED else ''}")
    return [InputCase(c.case_id, c.image_files, c.suffix, str(by_stem[c.case_id])) for c in cases]


@dataclass(frozen=True)
class PreprocessJob:
    """What a worker needs besides the case: the stage's parameters and the cascade's class count.

    Attributes:
        params: Preprocessing parameters of the model's stage.
        num_classes: Classes incl. background (cascade: one-hot channels ``1..K-1`` of the previous stage).
        scratch_dir: Folder for arrays passed through files (None: the system temporary folder).
        inline_limit: Arrays above this many bytes are passed through a temporary ``.npy`` file.
    """

    params: PreprocessParams
    num_classes: int
    scratch_dir: str | None = None
    inline_limit: int = INLINE_LIMIT_BYTES


def preprocess_input_case(case: InputCase, job: PreprocessJob) -> tuple[np.ndarray, CaseProperties]:
    """Network input ``(C [+ K-1], ...)`` float32 and properties of one case (spec §4.6, cascade §9)."""
    data, _, props = preprocess_case(list(case.image_files), None, job.params, case.case_id)
    if case.prev_stage_file is not None:
        from stages.predict.cascade import prev_stage_input

        onehot = prev_stage_input(case.prev_stage_file, props, job.params, job.num_classes)
        data = np.concatenate([data, onehot], axis=0)
    return data, props


def _worker(case_id: str, case: InputCase, job: PreprocessJob) -> tuple[np.ndarray | str, CaseProperties]:
    """Worker side: preprocess; a large result is written to a temporary ``.npy`` whose path is returned."""
    data, props = preprocess_input_case(case, job)
    if data.nbytes <= job.inline_limit:
        return data, props
    fd, tmp = tempfile.mkstemp(prefix=f".{case_id}-", suffix=".npy", dir=job.scratch_dir)
    with os.fdopen(fd, "wb") as fh:
        np.save(fh, data, allow_pickle=False)
    return tmp, props


def _materialize(result: np.ndarray | str) -> np.ndarray:
    if isinstance(result, np.ndarray):
        return result
    try:
        return np.load(result, allow_pickle=False)
    finally:
        Path(result).unlink(missing_ok=True)


def default_preprocess_workers() -> int:
    """``NNKUBE_PREPROCESS_WORKERS`` or the available CPUs, at most nnU-Net's default of 6."""
    return default_workers(PREPROCESS_WORKERS_ENV, cap=DEFAULT_PREPROCESS_WORKERS)


def iter_preprocessed(
    cases: Sequence[InputCase], job: PreprocessJob, num_workers: int | None = None
) -> Iterator[tuple[InputCase, np.ndarray, CaseProperties]]:
    """Yield ``(case, network input, properties)`` in case order, preprocessing ahead in worker processes.

    At most ``num_workers + 1`` cases are submitted and not yet consumed (the workers' cases plus one ready
    case, nnU-Net's queue of size 1), so memory stays bounded however many cases there are.

    Args:
        cases: Cases in the order they are wanted.
        job: Preprocessing parameters.
        num_workers: Worker processes; 0 preprocesses in this process when the consumer asks (default:
            :func:`default_preprocess_workers`).

    Raises:
        WorkerDiedError: A worker process died (the case it was preprocessing is named).
        Exception: The first error of preprocessing (e.g. :class:`DatasetError` for a broken image).
    """
    workers = default_preprocess_workers() if num_workers is None else int(num_workers)
    workers = min(workers, len(cases))
    if workers <= 0:
        for case in cases:
            data, props = preprocess_input_case(case, job)
            yield case, data, props
        return
    pool = CasePool(workers, [__name__], job.scratch_dir)
    pending: deque[tuple[InputCase, Future]] = deque()
    todo = iter(cases)

    def refill() -> None:
        while len(pending) < workers + 1:
            case = next(todo, None)
            if case is None:
                return
            pending.append((case, pool.submit(_worker, case.case_id, (case, job))))

    try:
        refill()
        while pending:
            case, fut = pending.popleft()
            try:
                (payload, props), _rss = fut.result()
            except BrokenProcessPool as exc:
                pool.shutdown()
                in_flight = [case.case_id] + [c.case_id for c, _ in pending]
                raise pool.died("preprocessing for prediction", in_flight, in_flight + [c.case_id for c in todo],
                                "use fewer preprocessing processes (--num_threads_preprocessing) or more memory"
                                ) from exc
            refill()  # keep the workers busy while the consumer predicts this case
            yield case, _materialize(payload), props
    finally:
        pool.shutdown()
        for _case, fut in pending:  # results nobody consumed: drop their temporary files
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                leftover = fut.result()[0][0]
                if isinstance(leftover, str):
                    Path(leftover).unlink(missing_ok=True)
        pool.close()
