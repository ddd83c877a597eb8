"""Preprocessing of one case and of a whole dataset for one plans stage (spec §4).

Per case: read and crop to the nonzero region (§2.1) -> transpose with ``transpose_forward`` -> NaN to 0 ->
resample to the stage's spacing (§4.2; the 2D configuration keeps each case's own axis-0 spacing, §4.4) ->
intensity normalization (§4.3) -> foreground-location sampling (§4.5). The same function serves test time
(``label_file=None``; a segmentation of 0 inside / -1 outside the nonzero mask is then used for normalization
only). Results are stored as plain ``.npy`` (memory-mappable by training) plus a :class:`CaseProperties` JSON,
written last, so a case whose JSON exists and matches the parameters is complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from stages.dataset.layout import IMAGES_TR, image_file_names, suffix_of_entry
from stages.dataset.models import DatasetJson, case_id_from_entry, load_dataset_json, unsafe_case_id_reason
from stages.errors import BadInputError, DatasetError
from stages.fsutil import atomic_path, copy_atomic
from stages.imageio import strip_image_suffix
from stages.plan.models import IntensityStats, Plans
from stages.preprocess.class_locations import sample_class_locations
from stages.preprocess.cropping import load_and_crop_case
from stages.preprocess.models import CaseProperties, data_file, properties_file, seg_file
from stages.preprocess.normalization import normalize
from stages.preprocess.resampling import RESAMPLING_SEPARATE_Z_ANISO_THRESHOLD, resample_patient
from stages.workers import map_cases

log = logging.getLogger(__name__)

GT_FOLDER = "gt_segmentations"
_INT8_MAX = 127


class PreprocessParams(BaseModel):
    """Everything preprocessing needs from the plans for one stage.

    Attributes:
        target_spacing: Stage spacing in transposed order (axis 0 is replaced per case when ``is_2d``).
        transpose_forward: Axis permutation applied after cropping.
        transpose_backward: Its inverse (for reverting).
        normalization_schemes: ``CT`` / ``nonCT`` / ``noNorm`` per channel.
        use_mask_for_norm: Normalize inside the nonzero mask per channel.
        intensity_properties: Dataset-foreground statistics per channel (for ``CT``).
        is_2d: 2D configuration: no resampling along axis 0 (spec §4.4).
        all_classes: Foreground classes, in the order class locations are sampled.
        separate_z_anisotropy_threshold: Anisotropy ratio that triggers separate-z resampling.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_spacing: list[float]
    transpose_forward: list[int]
    transpose_backward: list[int]
    normalization_schemes: dict[int, str]
    use_mask_for_norm: dict[int, bool]
    intensity_properties: dict[int, IntensityStats] | None = None
    is_2d: bool = False
    all_classes: list[int]
    separate_z_anisotropy_threshold: float = RESAMPLING_SEPARATE_Z_ANISO_THRESHOLD

    @classmethod
    def from_plans(cls, plans: Plans, stage: int) -> PreprocessParams:
        """Parameters of stage ``stage`` of ``plans``."""
        if stage not in plans.plans_per_stage:
            raise BadInputError(f"plans have no stage {stage} (stages: {sorted(plans.plans_per_stage)})")
        return cls(
            target_spacing=[float(s) for s in plans.plans_per_stage[stage].current_spacing],
            transpose_forward=list(plans.transpose_forward),
            transpose_backward=list(plans.transpose_backward),
            normalization_schemes=dict(plans.normalization_schemes),
            use_mask_for_norm=dict(plans.use_mask_for_norm),
            intensity_properties=plans.intensity_properties,
            is_2d=plans.dimension == "2D",
            all_classes=list(plans.all_classes),
        )

    def target_spacing_for(self, original_spacing_transposed: Sequence[float]) -> list[float]:
        """The spacing a case is resampled to (2D keeps the case's own axis-0 spacing)."""
        target = list(self.target_spacing)
        if self.is_2d:
            target[0] = float(original_spacing_transposed[0])
        return target

    def digest(self) -> str:
        """Short hash identifying these parameters (stored per case to detect stale outputs)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def _spatial_transpose(arr: np.ndarray, order: Sequence[int]) -> np.ndarray:
    return arr.transpose((0, *[int(a) + 1 for a in order]))


def preprocess_case(
    image_files: Sequence[str | os.PathLike],
    label_file: str | os.PathLike | None,
    params: PreprocessParams,
    case_id: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """Preprocess one case (spec §4.1-4.5, §4.6 at test time).

    Args:
        image_files: One file per modality, in modality order.
        label_file: The label map, or None at test time.
        params: Stage parameters (:meth:`PreprocessParams.from_plans`).
        case_id: Case id for the properties (default: derived from the file names).

    Returns:
        ``(data float32 (C, ...), seg int8 (1, ...) or None, properties)`` in transposed, resampled order.
    """
    if case_id is None:
        name = strip_image_suffix(Path(label_file if label_file is not None else image_files[0]).name)
        case_id = name[:-5] if label_file is None and name[-5:-4] == "_" and name[-4:].isdigit() else name
    data, seg, crop_props = load_and_crop_case(image_files, label_file)
    if data.shape[0] != len(params.normalization_schemes):
        raise DatasetError(
            f"case {case_id}: {data.shape[0]} image channel(s) but the plans expect {len(params.normalization_schemes)}"
        )
    tf = params.transpose_forward
    data = _spatial_transpose(data, tf)
    seg = _spatial_transpose(seg, tf)
    spacing_t = [float(crop_props["original_spacing"][a]) for a in tf]
    target = params.target_spacing_for(spacing_t)
    data[np.isnan(data)] = 0
    data, seg = resample_patient(data, seg, spacing_t, target, 3, 1, None, 0, 0,
                                 params.separate_z_anisotropy_threshold)
    seg[seg < -1] = 0
    data = np.ascontiguousarray(normalize(data, seg, params.normalization_schemes, params.use_mask_for_norm,
                                          params.intensity_properties))
    locations: dict[int, list[list[int]]] = {}
    if label_file is not None:
        if seg.max(initial=0) > _INT8_MAX:
            raise DatasetError(f"case {case_id}: {label_file}: label values above {_INT8_MAX} are not supported")
        sampled = sample_class_locations(seg[0], params.all_classes)
        locations = {c: v.tolist() for c, v in sampled.items()}
    props = CaseProperties(
        case_id=case_id,
        **crop_props,
        use_nonzero_mask_for_norm=dict(params.use_mask_for_norm),
        size_after_resampling=[int(s) for s in data.shape[1:]],
        spacing_after_resampling=target,
        class_locations=locations,
        preprocessing_digest=params.digest(),
    )
    seg_out = np.ascontiguousarray(seg, dtype=np.int8) if label_file is not None else None
    return data, seg_out, props


def save_npy_atomic(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write ``arr`` as a ``.npy`` file atomically (no pickled objects)."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, arr, allow_pickle=False)


def save_case(out_dir: str | os.PathLike, case_id: str, data: np.ndarray, seg: np.ndarray | None,
              props: CaseProperties) -> None:
    """Write a case in the layout of :mod:`stages.preprocess.models`, each file atomically, properties last.

    Args:
        out_dir: Stage folder (created).
        case_id: Case id (file name stem).
        data: float32 ``(C, ...)``.
        seg: int8 ``(1, ...)`` or None (test time: no segmentation file).
        props: Properties document.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # a stale properties file must not vouch for new arrays while they are being replaced
    (out / properties_file(case_id)).unlink(missing_ok=True)
    save_npy_atomic(out / data_file(case_id), np.asarray(data, dtype=np.float32))
    if seg is not None:
        save_npy_atomic(out / seg_file(case_id), np.asarray(seg, dtype=np.int8))
    props.save(out / properties_file(case_id))


def load_case(folder: str | os.PathLike, case_id: str, mmap: bool = True
              ) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """Read a preprocessed case.

    Args:
        folder: Stage folder.
        case_id: Case id.
        mmap: Memory-map the arrays read-only instead of reading them.

    Returns:
        ``(data, seg or None, properties)``.
    """
    folder = Path(folder)
    props = CaseProperties.load(folder / properties_file(case_id))
    mode = "r" if mmap else None
    data = np.load(folder / data_file(case_id), mmap_mode=mode, allow_pickle=False)
    seg_path = folder / seg_file(case_id)
    seg = np.load(seg_path, mmap_mode=mode, allow_pickle=False) if seg_path.is_file() else None
    return data, seg, props


def is_case_complete(folder: str | os.PathLike, case_id: str, digest: str | None = None,
                     with_seg: bool = True) -> bool:
    """True if the case's files exist, agree in shape and were made with parameters of ``digest``."""
    folder = Path(folder)
    try:
        props = CaseProperties.load(folder / properties_file(case_id))
        data = np.load(folder / data_file(case_id), mmap_mode="r", allow_pickle=False)
        seg = np.load(folder / seg_file(case_id), mmap_mode="r", allow_pickle=False) if with_seg else None
    except (OSError, ValueError, BadInputError):
        return False
    if digest is not None and props.preprocessing_digest != digest:
        return False
    shape = list(props.size_after_resampling)
    if list(data.shape[1:]) != shape or data.dtype != np.float32:
        return False
    return seg is None or (list(seg.shape) == [1, *shape] and seg.dtype == np.int8)


def training_cases(task_dir: str | os.PathLike, dataset: DatasetJson | None = None,
                   only: Collection[str] | None = None) -> dict[str, tuple[list[Path], Path]]:
    """Image and label files of the training cases of a raw dataset.

    Modalities are ``imagesTr/<case>_XXXX<suffix>``; a single-modality MSD dataset's ``imagesTr/<case><suffix>``
    is accepted as modality 0.

    Args:
        task_dir: Raw dataset folder.
        dataset: Its parsed ``dataset.json`` (read from ``task_dir`` when None).
        only: Restrict to these case ids (files of other cases need not be present).

    Returns:
        ``{case_id: (image_files, label_file)}`` in ``dataset.json`` order.

    Raises:
        DatasetError: A case id is unsafe, unknown (in ``only``) or a file is missing (all problems listed).
    """
    task_dir = Path(task_dir)
    dataset = dataset or load_dataset_json(task_dir)
    n_mod = dataset.num_modalities
    out: dict[str, tuple[list[Path], Path]] = {}
    problems: list[str] = []
    if only is not None:
        unknown = sorted(set(only) - set(dataset.case_ids()))
        if unknown:
            problems.append(f"cases not in dataset.json: {', '.join(unknown)}")
    for entry in dataset.training:
        case_id = case_id_from_entry(entry.image, IMAGES_TR)
        if only is not None and case_id not in only:
            continue
        reason = unsafe_case_id_reason(case_id)
        if reason:
            problems.append(f"case {case_id!r}: {reason}")
            continue
        suffix = suffix_of_entry(entry.image)
        images = [task_dir / IMAGES_TR / n for n in image_file_names(case_id, n_mod, suffix)]
        if not all(p.is_file() for p in images):
            single = task_dir / IMAGES_TR / f"{case_id}{suffix}"
            if n_mod == 1 and single.is_file():
                images = [single]
            else:
                missing = ", ".join(str(p) for p in images if not p.is_file())
                problems.append(f"case {case_id}: missing image file(s) {missing}")
                continue
        label = task_dir / entry.label.removeprefix("./")
        if not label.is_file():
            problems.append(f"case {case_id}: missing label file {label}")
            continue
        out[case_id] = (images, label)
    if problems:
        raise DatasetError(f"{task_dir}: " + "; ".join(problems))
    return out


def _preprocess_and_save(case_id: str, image_files: list[Path], label_file: Path, params: PreprocessParams,
                         out_dir: str) -> str:
    """Worker: preprocess one training case and write it."""
    data, seg, props = preprocess_case(image_files, label_file, params, case_id)
    save_case(out_dir, case_id, data, seg, props)
    return case_id


def copy_ground_truth(cases: dict[str, tuple[list[Path], Path]], output_dir: str | os.PathLike) -> Path:
    """Copy label files to ``<output_dir>/gt_segmentations/`` (atomically; copies already up to date are kept)."""
    gt = Path(output_dir) / GT_FOLDER
    gt.mkdir(parents=True, exist_ok=True)
    for _case_id, (_images, label) in cases.items():
        dest = gt / label.name
        src_stat = label.stat()
        if dest.is_file():
            dst_stat = dest.stat()
            if (dst_stat.st_size, int(dst_stat.st_mtime)) == (src_stat.st_size, int(src_stat.st_mtime)):
                continue
        copy_atomic(label, dest, keep_metadata=True)
    return gt


def preprocess_dataset(
    task_dir: str | os.PathLike,
    plans: Plans,
    stages_to_run: Sequence[int],
    output_dir: str | os.PathLike,
    num_processes: int,
    case_ids: Sequence[str] | None = None,
) -> list[str]:
    """Preprocess the training cases of a raw dataset for the given plans stages (spec §4.1).

    Output per stage: ``<output_dir>/<plans.stage_folder(stage)>/``; label files are copied to
    ``<output_dir>/gt_segmentations/``. Cases whose outputs are complete for the same parameters are skipped.

    Args:
        task_dir: Raw dataset folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``).
        plans: Plans (2D or 3D).
        stages_to_run: Stage indices of ``plans`` to produce.
        output_dir: The task's preprocessed folder.
        num_processes: Worker processes per stage.
        case_ids: Only these cases (e.g. one shard); default all training cases.

    Returns:
        The case ids covered (processed now or already complete), in dataset order.
    """
    cases = training_cases(task_dir, only=None if case_ids is None else set(case_ids))
    output_dir = Path(output_dir)
    copy_ground_truth(cases, output_dir)
    for stage in stages_to_run:
        params = PreprocessParams.from_plans(plans, stage)
        folder = output_dir / plans.stage_folder(stage)
        folder.mkdir(parents=True, exist_ok=True)
        digest = params.digest()
        todo = [c for c in cases if not is_case_complete(folder, c, digest)]
        log.info("stage %d (%s): %d cases, %d already done, %d to preprocess with %d process(es)", stage,
                 folder.name, len(cases), len(cases) - len(todo), len(todo), num_processes)
        items = [(c, (cases[c][0], cases[c][1], params, str(folder))) for c in todo]
        map_cases(_preprocess_and_save, items, num_processes, desc=f"preprocess {folder.name}",
                  marker_root=folder)
    return list(cases)
