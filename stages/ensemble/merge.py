"""Ensembling of saved class probabilities (spec §11.2, §11.3).

Every prediction folder holds, per case, ``<case>.npz`` (key ``softmax``, float16, ``(K, z, y, x)`` on the
case's full original image grid) and ``<case>.json`` (:class:`~stages.preprocess.models.CaseProperties`). The
ensemble of a case is the arithmetic mean of its probability maps over the folders, argmaxed into a label map
and written with the case's original geometry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.errors import BadInputError
from stages.fsutil import copy_atomic
from stages.imageio import write_image
from stages.postprocess.connected_components import apply_postprocessing_to_folder
from stages.postprocess.models import POSTPROCESSING_JSON, load_rules
from stages.predict.export import SOFTMAX_KEY, save_softmax
from stages.preprocess.models import CaseProperties

log = logging.getLogger(__name__)

NOT_POSTPROCESSED = "not_postprocessed"


@dataclass(frozen=True)
class MergeJob:
    """One case to ensemble: its probability files, its properties file and where the result goes."""

    case: str
    npz_files: tuple[Path, ...]
    properties_file: Path
    output_file: Path
    npz_output: Path | None = None


def load_softmax(path: Path) -> np.ndarray:
    """The ``softmax`` array of a ``<case>.npz`` as float32; a clear error when it is absent or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if SOFTMAX_KEY not in data.files:
                raise BadInputError(f"{path}: no '{SOFTMAX_KEY}' array (keys: {', '.join(data.files)})")
            return data[SOFTMAX_KEY].astype(np.float32)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: cannot read the probabilities ({exc})") from exc


def merge_case(job: MergeJob) -> Path:
    """Average the probabilities of one case, argmax, and write the label map (and optionally the mean).

    Raises:
        BadInputError: Shapes differ between the inputs or do not match the case's geometry.
    """
    props = CaseProperties.load(job.properties_file)
    total: np.ndarray | None = None
    for path in job.npz_files:
        probs = load_softmax(path)
        if total is None:
            total, first = probs, path
            expected = props.geometry.array_shape
            if probs.ndim != len(expected) + 1 or tuple(probs.shape[1:]) != expected:
                raise BadInputError(
                    f"case {job.case}: {path} has shape {probs.shape}, expected (K, {', '.join(map(str, expected))})"
                    f" on the original image grid of {job.properties_file}"
                )
        elif probs.shape != total.shape:
            raise BadInputError(
                f"case {job.case}: probability shapes differ: {first} {total.shape} vs {path} {probs.shape}"
            )
        else:
            total += probs
    mean = total / len(job.npz_files)
    write_image(np.argmax(mean, axis=0).astype(np.uint8), props.geometry, job.output_file)
    if job.npz_output is not None:
        save_softmax(mean, job.npz_output)
        copy_atomic(job.properties_file, job.npz_output.with_suffix(".json"))
    return job.output_file


def run_jobs(jobs: Sequence[MergeJob], num_processes: int = 1) -> list[Path]:
    """Run merge jobs, in worker processes when ``num_processes > 1``."""
    if num_processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=num_processes) as pool:
            return list(pool.map(merge_case, jobs))
    return [merge_case(j) for j in jobs]


def npz_cases(folder: Path) -> dict[str, Path]:
    """``case -> <case>.npz`` of one folder (hidden temporary files excluded)."""
    return {p.stem: p for p in folder.glob("*.npz") if not p.name.startswith(".")}


def ensemble_folders(
    folders: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    postprocessing_json: str | os.PathLike | None = None,
    save_npz: bool = False,
    num_processes: int = 1,
) -> list[str]:
    """Ensemble the saved probabilities of several prediction folders (``nnUNet_ensemble``).

    Args:
        folders: One or more prediction folders made with ``--save_npz`` (each holding ``<case>.npz`` and
            ``<case>.json``).
        out_dir: Output folder. With postprocessing the raw ensemble goes to ``out_dir/not_postprocessed/``
            and the postprocessed label maps (plus a copy of the rules) to ``out_dir``.
        postprocessing_json: Rules to apply (``postprocessing.json`` of the chosen ensemble).
        save_npz: Also write the mean probabilities (``<case>.npz`` + ``<case>.json``) beside the raw output.
        num_processes: Worker processes.

    Returns:
        The ensembled case ids, sorted.

    Raises:
        BadInputError: A folder is missing, lacks a case's ``.npz`` or ``.json``, or shapes disagree.
    """
    dirs = [Path(f) for f in folders]
    if not dirs:
        raise BadInputError("ensembling needs at least one prediction folder")
    for d in dirs:
        if not d.is_dir():
            raise BadInputError(f"{d}: prediction folder not found")
    per_folder = [npz_cases(d) for d in dirs]
    cases = sorted(set().union(*per_folder))
    if not cases:
        raise BadInputError(f"no <case>.npz files in {', '.join(map(str, dirs))}; predict with --save_npz")
    for d, found in zip(dirs, per_folder):
        missing = [c for c in cases if c not in found]
        if missing:
            raise BadInputError(
                f"{d} lacks the probabilities of case {missing[0]} ({missing[0]}.npz)"
                + (f" and {len(missing) - 1} more case(s)" if len(missing) > 1 else "")
                + "; predict every folder with --save_npz"
            )
    rules = load_rules(postprocessing_json) if postprocessing_json is not None else None
    out_dir = Path(out_dir)
    raw_dir = out_dir / NOT_POSTPROCESSED if rules is not None else out_dir
    raw_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for case in cases:
        props = dirs[0] / f"{case}.json"
        if not props.is_file():
            raise BadInputError(f"{props}: properties of case {case} missing (written beside {case}.npz)")
        jobs.append(MergeJob(case, tuple(f[case] for f in per_folder), props, raw_dir / f"{case}.nii.gz",
                             raw_dir / f"{case}.npz" if save_npz else None))
    run_jobs(jobs, num_processes)
    if rules is not None:
        apply_postprocessing_to_folder(raw_dir, out_dir, rules, num_processes)
        copy_atomic(postprocessing_json, out_dir / POSTPROCESSING_JSON)
    log.info("ensembled %d case(s) from %d folders into %s", len(cases), len(dirs), out_dir)
    return cases
