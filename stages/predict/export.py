"""Writing predictions in the geometry of the input image (spec §8.5, §8.6), optionally in worker processes.

Segmentation: the class probabilities (preprocessed grid, transposed order) are transposed back, resampled to
``size_after_cropping`` when the grids differ (order 1, separate-z rule of the export, order 0 along a separate
low-resolution axis; see :mod:`stages.preprocess.revert`), turned into labels by argmax and pasted into a zero
``uint8`` volume of ``original_size_of_raw_data`` at ``crop_bbox``; the file gets the spacing, origin and
direction of the input image exactly (``<case>.nii.gz``).

Softmax export convention (spec §8.6 / §16.7), chosen once for every producer and consumer in nnkube:
``<case>.npz`` holds key ``softmax``, float16, class-first ``(K, *original_size_of_raw_data)`` in the original
array axis order on the **full, uncropped** input grid (background probability 1 and every other class 0
outside the crop box), i.e. voxel for voxel aligned with ``<case>.nii.gz``. Ensembling therefore averages npz
arrays of equal shape directly and never resamples. ``<case>.json`` beside it is the case's
:class:`~stages.preprocess.models.CaseProperties` (without the class locations, which only training needs);
nothing is pickled.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.fsutil import atomic_path
from stages.imageio import strip_image_suffix, write_image
from stages.preprocess.models import CaseProperties
from stages.preprocess.revert import (
    DEFAULT_EXPORT_RESAMPLING,
    ExportResampling,
    TransposeSource,
    paste_into_original,
    revert_probabilities,
)
from stages.resources import default_workers
from stages.workers import pool_context

logger = logging.getLogger(__name__)

#: Probability maps larger than this travel to export workers through a temporary ``.npy`` file instead of a
#: pipe (nnU-Net v1 does the same above ~2 GB; a pipe copies the array twice).
INLINE_LIMIT_BYTES = 256 * 2**20
EXPORT_WORKERS_ENV = "NNKUBE_EXPORT_WORKERS"
#: The key of the probabilities in ``<case>.npz``.
SOFTMAX_KEY = "softmax"


def probabilities_to_segmentation(
    probs: np.ndarray,
    props: CaseProperties,
    transpose_backward: TransposeSource,
    resampling: ExportResampling = DEFAULT_EXPORT_RESAMPLING,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels on the original image grid from probabilities on the preprocessed grid (spec §8.5).

    Args:
        probs: ``(K, *size_after_resampling)`` class probabilities in transposed (preprocessed) order.
        props: The case's properties.
        transpose_backward: ``transpose_backward`` of the plans (or the plans / preprocessing parameters).
        resampling: The plans' export resampling (default: nnU-Net's export defaults).

    Returns:
        ``(segmentation, cropped_probabilities)``: uint8 labels of ``original_size_of_raw_data`` and the
        probabilities ``(K, *size_after_cropping)`` in original axis order (float32 unless ``probs`` is float64).
    """
    if probs.shape[0] > 256:
        raise ValueError(f"case {props.case_id}: {probs.shape[0]} classes do not fit a uint8 segmentation")
    if probs.dtype not in (np.float32, np.float64):
        probs = probs.astype(np.float32)
    cropped = revert_probabilities(probs, props, transpose_backward, resampling)
    labels = np.argmax(cropped, axis=0).astype(np.uint8)
    return paste_into_original(labels, props, 0), cropped


def softmax_for_export(cropped_probs: np.ndarray, props: CaseProperties) -> np.ndarray:
    """float16 ``(K, *original_size_of_raw_data)`` probabilities: background 1 outside the crop box."""
    fill = [1.0] + [0.0] * (cropped_probs.shape[0] - 1)
    return paste_into_original(cropped_probs.astype(np.float16), props, fill)


def sidecar_paths(out_file: str | os.PathLike) -> tuple[Path, Path]:
    """``(<case>.npz, <case>.json)`` beside a segmentation file ``<case>.nii.gz``."""
    out_file = Path(out_file)
    stem = strip_image_suffix(out_file.name)
    return out_file.with_name(f"{stem}.npz"), out_file.with_name(f"{stem}.json")


def save_softmax(probabilities: np.ndarray, path: str | os.PathLike) -> None:
    """Write ``<case>.npz`` (key ``softmax``, float16) atomically, by the convention above."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **{SOFTMAX_KEY: np.asarray(probabilities, dtype=np.float16)})


def export_prediction(
    probs: np.ndarray | str | os.PathLike,
    props: CaseProperties,
    out_file: str | os.PathLike,
    transpose_backward: TransposeSource,
    save_npz: bool = False,
    resampling: ExportResampling = DEFAULT_EXPORT_RESAMPLING,
) -> list[Path]:
    """Write the segmentation (and optionally the softmax) of one case in the input's geometry.

    Args:
        probs: ``(K, *size_after_resampling)`` probabilities on the preprocessed grid, or a ``.npy`` file
            holding them.
        props: The case's properties (``geometry`` is that of the input image).
        out_file: Segmentation file, e.g. ``out/<case>.nii.gz`` (the format follows the suffix).
        transpose_backward: ``transpose_backward`` of the plans (or the plans / preprocessing parameters).
        save_npz: Also write ``<case>.npz`` (full-grid float16 softmax) and ``<case>.json`` (properties).
        resampling: The plans' export resampling (default: nnU-Net's export defaults).

    Returns:
        The files written.
    """
    if not isinstance(probs, np.ndarray):
        probs = np.load(probs, mmap_mode="r")
    out_file = Path(out_file)
    seg, cropped = probabilities_to_segmentation(probs, props, transpose_backward, resampling)
    if seg.shape != props.geometry.array_shape:
        raise ValueError(f"case {props.case_id}: original_size_of_raw_data {seg.shape} does not match the "
                         f"input geometry {props.geometry.array_shape}")
    write_image(seg, props.geometry, out_file)
    written = [out_file]
    if save_npz:
        npz_file, json_file = sidecar_paths(out_file)
        save_softmax(softmax_for_export(cropped, props), npz_file)
        props.model_copy(update={"class_locations": {}}).save(json_file)
        written += [npz_file, json_file]
    return written


def load_softmax(npz_file: str | os.PathLike) -> np.ndarray:
    """The ``softmax`` array of an exported ``<case>.npz`` (float16, full original grid)."""
    with np.load(npz_file) as npz:
        return npz[SOFTMAX_KEY]


@dataclass
class _Job:
    probs: np.ndarray | str
    props: CaseProperties
    out_file: str
    transpose_backward: TransposeSource
    save_npz: bool
    resampling: ExportResampling
    delete_probs_file: bool


def _run_job(job: _Job) -> list[Path]:
    try:
        return export_prediction(job.probs, job.props, job.out_file, job.transpose_backward, job.save_npz,
                                 job.resampling)
    finally:
        if job.delete_probs_file:
            Path(job.probs).unlink(missing_ok=True)


class ExportPool:
    """Bounded pool of export processes, so that the network does not wait for resampling and file writing.

    ``submit`` returns at once while fewer than ``max_pending`` exports are unfinished, else it waits for the
    oldest. The first error of any export is raised by the next ``submit``, by ``wait`` or on leaving the
    ``with`` block. With ``workers=0`` exports run synchronously in the caller.

    Args:
        workers: Export processes (default: ``NNKUBE_EXPORT_WORKERS`` or the available CPUs, at most 2, the
            default of nnU-Net v1's ``--num_threads_nifti_save``).
        max_pending: Exports queued or running before ``submit`` blocks (default ``2 * workers``).
        scratch_dir: Folder for temporary probability files (default: the system temporary folder).
        inline_limit: Probability maps above this many bytes travel through a temporary ``.npy`` file.
    """

    def __init__(self, workers: int | None = None, max_pending: int | None = None,
                 scratch_dir: str | os.PathLike | None = None, inline_limit: int = INLINE_LIMIT_BYTES) -> None:
        self.workers = default_workers(EXPORT_WORKERS_ENV, cap=2) if workers is None else int(workers)
        self.max_pending = max(1, max_pending or 2 * max(self.workers, 1))
        self.scratch_dir = Path(scratch_dir) if scratch_dir is not None else None
        self.inline_limit = inline_limit
        self._pending: deque[Future] = deque()
        self._written: list[Path] = []
        self._temp_files: list[str] = []
        self._executor = (ProcessPoolExecutor(self.workers, mp_context=pool_context())
                          if self.workers > 0 else None)

    def submit(
        self,
        probs: np.ndarray,
        props: CaseProperties,
        out_file: str | os.PathLike,
        transpose_backward: TransposeSource,
        save_npz: bool = False,
        resampling: ExportResampling = DEFAULT_EXPORT_RESAMPLING,
    ) -> None:
        """Queue :func:`export_prediction` of one case (arguments as there)."""
        axes = [int(a) for a in getattr(transpose_backward, "transpose_backward", transpose_backward)]
        job = _Job(probs, props, str(out_file), axes, save_npz, resampling, False)
        if self._executor is None:
            self._written += _run_job(job)
            return
        self._collect(block_until=self.max_pending - 1)
        if probs.nbytes > self.inline_limit:
            fd, tmp = tempfile.mkstemp(prefix=f"{props.case_id}-", suffix=".npy", dir=self.scratch_dir)
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, probs)
            job.probs, job.delete_probs_file = tmp, True
            self._temp_files.append(tmp)
        self._pending.append(self._executor.submit(_run_job, job))

    def _collect(self, block_until: int) -> None:
        """Harvest finished exports (raising their errors); wait until at most ``block_until`` are pending."""
        while self._pending and (self._pending[0].done() or len(self._pending) > block_until):
            self._written += self._pending.popleft().result()

    def wait(self) -> list[Path]:
        """Wait for every queued export; returns all files written so far (raises the first error)."""
        self._collect(block_until=0)
        return list(self._written)

    def close(self, cancel: bool = False) -> None:
        """Shut the worker processes down (``cancel``: drop exports that have not started)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=cancel)
            self._executor = None
        for tmp in self._temp_files:  # left over by cancelled or failed exports
            Path(tmp).unlink(missing_ok=True)
        self._temp_files.clear()

    def __enter__(self) -> ExportPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.wait()
            finally:
                self.close()
        else:
            self.close(cancel=True)
