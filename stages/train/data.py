"""Training patches from preprocessed cases: the 3D and 2D batch loaders (spec §6.3) and the enlarged patch (§7.2).

The loaders follow nnU-Net v1's ``DataLoader3D``/``DataLoader2D``: cases are drawn uniformly with replacement,
the last ``batch_size - round(batch_size * (1 - oversample))`` samples of every batch are centred on a stored
foreground voxel, the others lie anywhere such that at most half of the loader's extra margin sticks out of the
image, and whatever lies outside the image is padded (image 0, segmentation -1). Arrays are read through memory
mapping, so a loader holds no image data and is cheap to hand to worker processes.

Randomness comes from NumPy's global generator, as in batchgenerators' transforms, so seeding a worker (or the
main process with ``np.random.seed``) makes batches reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from batchgenerators.augmentations.utils import rotate_coords_2d, rotate_coords_3d
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase

from stages.errors import BadInputError, DatasetError
from stages.preprocess.models import CaseProperties, data_file, properties_file, seg_file

DEFAULT_OVERSAMPLE_FOREGROUND = 0.33
PREV_STAGE_SUFFIX = "_segFromPrevStage"


def prev_stage_file(case_id: str) -> str:
    """File name of a case's previous-stage (3d_lowres) segmentation on the full-resolution grid.

    ``<case>_segFromPrevStage.npy`` holds a (z, y, x) or (1, z, y, x) integer label map; nnU-Net v1's
    ``<case>_segFromPrevStage.npz`` (key ``data``) is read as well.
    """
    return f"{case_id}{PREV_STAGE_SUFFIX}.npy"


@dataclass(frozen=True)
class CaseEntry:
    """Where one preprocessed case lives and where its foreground is."""

    case_id: str
    data_path: Path
    seg_path: Path
    prev_stage_path: Path | None = None
    class_locations: dict[int, np.ndarray] = field(default_factory=dict)
    """Per foreground class with at least one stored voxel: (N, 3) int32 voxel indices (z, y, x)."""


class PreprocessedDataset:
    """The cases of one preprocessed configuration folder that a loader may draw from.

    Only file paths and the stored foreground locations are kept in memory; image arrays are memory-mapped
    on every read. Missing files are reported up front (not inside a worker process).

    Args:
        folder: The configuration's preprocessed folder (``nnUNetData_plans_v2.1_stage<i>``).
        case_ids: The cases to use (e.g. one fold's training cases); default: every case with a ``_seg.npy``.
        prev_stage_folder: Folder of the previous stage's segmentations (cascade only).

    Raises:
        DatasetError: A case lacks its image, segmentation, properties or previous-stage file.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        case_ids: Sequence[str] | None = None,
        prev_stage_folder: str | os.PathLike | None = None,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DatasetError(f"{self.folder}: preprocessed folder not found")
        if case_ids is None:
            suffix = seg_file("")
            case_ids = sorted(p.name[: -len(suffix)] for p in self.folder.glob(f"*{suffix}"))
        self.prev_stage_folder = Path(prev_stage_folder) if prev_stage_folder is not None else None
        problems: list[str] = []
        entries: dict[str, CaseEntry] = {}
        for case_id in sorted(case_ids):
            entry = self._make_entry(case_id, problems)
            if entry is not None:
                entries[case_id] = entry
        if problems:
            raise DatasetError(f"{self.folder}: {len(problems)} problem(s) with preprocessed cases:\n  - "
                               + "\n  - ".join(problems))
        if not entries:
            raise DatasetError(f"{self.folder}: no preprocessed cases to train on")
        self._entries = entries

    def _make_entry(self, case_id: str, problems: list[str]) -> CaseEntry | None:
        data_path = self.folder / data_file(case_id)
        seg_path = self.folder / seg_file(case_id)
        props_path = self.folder / properties_file(case_id)
        missing = [p.name for p in (data_path, seg_path, props_path) if not p.is_file()]
        prev_path = None
        if self.prev_stage_folder is not None:
            prev_path = self.prev_stage_folder / prev_stage_file(case_id)
            if not prev_path.is_file():
                npz = prev_path.with_suffix(".npz")
                if npz.is_file():
                    prev_path = npz
                else:
                    problems.append(f"case {case_id}: seg from prev stage missing: {prev_path}")
        if missing:
            problems.append(f"case {case_id}: missing {', '.join(missing)}")
            return None
        try:
            props = CaseProperties.load(props_path)
        except BadInputError as exc:
            problems.append(f"case {case_id}: {exc}")
            return None
        locations = {}
        for cls, voxels in props.class_locations.items():
            if int(cls) > 0 and len(voxels):
                locations[int(cls)] = np.asarray(voxels, dtype=np.int32).reshape(len(voxels), -1)
        return CaseEntry(case_id, data_path, seg_path, prev_path, locations)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, case_id: str) -> CaseEntry:
        return self._entries[case_id]

    def __contains__(self, case_id: object) -> bool:
        return case_id in self._entries

    @property
    def case_ids(self) -> list[str]:
        """Sorted case identifiers."""
        return list(self._entries)

    @property
    def has_prev_stage(self) -> bool:
        """True if previous-stage segmentations are attached (cascade)."""
        return self.prev_stage_folder is not None

    def num_channels(self) -> int:
        """Number of image channels (read from the first case's array header)."""
        return int(self.load_data(self.case_ids[0]).shape[0])

    def load_data(self, case_id: str) -> np.ndarray:
        """The case's image array (C, z, y, x), memory-mapped read-only."""
        return _load_array(self._entries[case_id].data_path, case_id, ndim=4)

    def load_seg(self, case_id: str, spatial_shape: Sequence[int]) -> np.ndarray:
        """The case's segmentation (1, z, y, x), memory-mapped; its shape is checked against the image's."""
        seg = _load_array(self._entries[case_id].seg_path, case_id, ndim=4)
        if tuple(seg.shape[1:]) != tuple(spatial_shape):
            raise DatasetError(f"case {case_id}: {self._entries[case_id].seg_path} has shape {seg.shape}, "
                               f"expected (1, {', '.join(map(str, spatial_shape))}) like the image")
        return seg

    def load_prev_stage(self, case_id: str, spatial_shape: Sequence[int]) -> np.ndarray:
        """The previous stage's segmentation (1, z, y, x); its shape must equal the image's."""
        path = self._entries[case_id].prev_stage_path
        if path is None:
            raise DatasetError(f"case {case_id}: seg from prev stage missing (no previous-stage folder given)")
        if path.suffix == ".npz":
            with np.load(path) as z:
                arr = z["data"]
        else:
            arr = np.load(path, mmap_mode="r")
        if arr.ndim == len(spatial_shape):
            arr = arr[None]
        if tuple(arr.shape[1:]) != tuple(spatial_shape):
            raise DatasetError(f"case {case_id}: {path} has shape {arr.shape}, expected the image's spatial shape "
                               f"{tuple(spatial_shape)}")
        return arr


def _load_array(path: Path, case_id: str, ndim: int) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"case {case_id}: cannot read {path}: {exc}") from exc
    if arr.ndim == ndim - 1:  # a single 2D slice stored without the slice axis
        arr = arr[:, None]
    if arr.ndim != ndim:
        raise DatasetError(f"case {case_id}: {path} has {arr.ndim} dimensions, expected (C, z, y, x)")
    return arr


def num_forced_foreground(batch_size: int, oversample_foreground_percent: float = DEFAULT_OVERSAMPLE_FOREGROUND) -> int:
    """How many samples of a batch are centred on foreground (Python ``round``, banker's rounding)."""
    return batch_size - round(batch_size * (1 - oversample_foreground_percent))


def _paste(src: np.ndarray, dst: np.ndarray, lower: Sequence[int]) -> None:
    """Copy the part of ``src`` (C, *shape) inside the box starting at ``lower`` into ``dst`` (C, *patch).

    ``dst`` is pre-filled with the padding value; only the voxels that lie inside the image are written.
    """
    src_sl: list[slice] = [slice(None)]
    dst_sl: list[slice] = [slice(None)]
    for lb, p, s in zip(lower, dst.shape[1:], src.shape[1:]):
        lo, hi = max(0, lb), min(s, lb + p)
        if hi <= lo:
            return
        src_sl.append(slice(lo, hi))
        dst_sl.append(slice(lo - lb, hi - lb))
    dst[tuple(dst_sl)] = src[tuple(src_sl)]


class _PatchLoader(SlimDataLoaderBase):
    """Shared machinery of the 3D and 2D loaders (usable with batchgenerators' augmenters)."""

    n_spatial: int = 3

    def __init__(
        self,
        dataset: PreprocessedDataset,
        patch_size: Sequence[int],
        final_patch_size: Sequence[int],
        batch_size: int,
        oversample_foreground_percent: float = DEFAULT_OVERSAMPLE_FOREGROUND,
    ) -> None:
        super().__init__(dataset, batch_size, None)
        if len(patch_size) != self.n_spatial or len(final_patch_size) != self.n_spatial:
            raise BadInputError(f"{type(self).__name__} needs {self.n_spatial}D patch sizes, got "
                                f"{list(patch_size)} and {list(final_patch_size)}")
        if batch_size < 1:
            raise BadInputError(f"batch size must be at least 1, got {batch_size}")
        self.dataset = dataset
        self.patch_size = tuple(int(p) for p in patch_size)
        self.final_patch_size = tuple(int(p) for p in final_patch_size)
        self.need_to_pad = tuple(p - f for p, f in zip(self.patch_size, self.final_patch_size))
        if min(self.need_to_pad) < 0:
            raise BadInputError(f"loader patch {list(patch_size)} is smaller than the final patch "
                                f"{list(final_patch_size)}")
        self.oversample_foreground_percent = oversample_foreground_percent
        self.keys = dataset.case_ids
        self.num_channels = dataset.num_channels()
        self.num_seg_channels = 2 if dataset.has_prev_stage else 1
        self.data_shape = (batch_size, self.num_channels, *self.patch_size)
        self.seg_shape = (batch_size, self.num_seg_channels, *self.patch_size)

    def get_do_oversample(self, sample_idx: int) -> bool:
        """True if sample ``sample_idx`` of a batch must be centred on foreground."""
        return not sample_idx < round(self.batch_size * (1 - self.oversample_foreground_percent))

    def _bounds(self, shape: Sequence[int]) -> tuple[list[int], list[int]]:
        """Inclusive range of the patch's lower corner per axis (spec §6.3)."""
        lbs, ubs = [], []
        for s, p, n in zip(shape, self.patch_size, self.need_to_pad):
            if n + s < p:  # image smaller than the patch even with the margin: pad more, on both sides
                n = p - s
            lbs.append((-n) // 2)  # nnU-Net writes ``- n // 2``, which Python evaluates as (-n) // 2
            ubs.append(s + n // 2 + n % 2 - p)
        return lbs, ubs

    def _lower_corner(self, shape: Sequence[int], voxel: np.ndarray | None) -> list[int]:
        """Random lower corner, or one that centres the patch on ``voxel`` (clipped below only)."""
        lbs, ubs = self._bounds(shape)
        if voxel is None:
            return [int(np.random.randint(lb, ub + 1)) for lb, ub in zip(lbs, ubs)]
        return [max(lb, int(v) - p // 2) for lb, v, p in zip(lbs, voxel, self.patch_size)]

    def _new_batch(self) -> tuple[np.ndarray, np.ndarray]:
        data = np.zeros(self.data_shape, dtype=np.float32)
        seg = np.empty(self.seg_shape, dtype=np.float32)
        seg[:, 0] = -1  # outside the image: "outside the nonzero mask"
        if self.num_seg_channels > 1:
            seg[:, 1:] = 0
        return data, seg

    def _case_arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        data = self.dataset.load_data(case_id)
        if data.shape[0] != self.num_channels:
            raise DatasetError(f"case {case_id}: {data.shape[0]} image channels, expected {self.num_channels}")
        seg = self.dataset.load_seg(case_id, data.shape[1:])
        prev = self.dataset.load_prev_stage(case_id, data.shape[1:]) if self.dataset.has_prev_stage else None
        return data, seg, prev

    def generate_train_batch(self) -> dict:
        """One batch: ``{"data": (B, C, *patch) float32, "seg": (B, 1|2, *patch) float32, "keys": [case ids]}``."""
        selected = np.random.choice(len(self.keys), self.batch_size, replace=True)
        data, seg = self._new_batch()
        keys = []
        for j, idx in enumerate(selected):
            case_id = self.keys[int(idx)]
            keys.append(case_id)
            self._fill_sample(j, case_id, self.get_do_oversample(j), data, seg)
        return {"data": data, "seg": seg, "keys": keys}

    def _fill_sample(self, j: int, case_id: str, force_fg: bool, data: np.ndarray, seg: np.ndarray) -> None:
        raise NotImplementedError


class DataLoader3D(_PatchLoader):
    """3D patches (spec §6.3, nnU-Net v1 ``DataLoader3D``).

    Args:
        dataset: The cases to draw from.
        patch_size: Patch read from the images (the enlarged patch for training, §7.2).
        final_patch_size: Patch the network sees; ``patch_size - final_patch_size`` is the margin that random
            patches may stick out of the image.
        batch_size: Samples per batch.
        oversample_foreground_percent: Share of each batch centred on foreground (0.33).
    """

    n_spatial = 3

    def _fill_sample(self, j: int, case_id: str, force_fg: bool, data: np.ndarray, seg: np.ndarray) -> None:
        image, labels, prev = self._case_arrays(case_id)
        voxel = None
        if force_fg:
            locations = self.dataset[case_id].class_locations
            if locations:
                classes = sorted(locations)
                voxels = locations[classes[int(np.random.choice(len(classes)))]]
                voxel = voxels[np.random.choice(len(voxels))]
        lower = self._lower_corner(image.shape[1:], voxel)
        _paste(image, data[j], lower)
        _paste(labels, seg[j, :1], lower)
        if prev is not None:
            _paste(prev, seg[j, 1:2], lower)


class DataLoader2D(_PatchLoader):
    """2D patches from slices along axis 0 of the preprocessed volumes (nnU-Net v1 ``DataLoader2D``).

    A slice is drawn first: uniformly, or for a foreground-forced sample uniformly among the slices holding a
    stored voxel of a randomly chosen class, then the in-plane patch as in 3D.

    Args:
        dataset: The cases to draw from.
        patch_size: In-plane patch read from the slices (enlarged for training).
        final_patch_size: In-plane patch the network sees.
        batch_size: Samples per batch.
        oversample_foreground_percent: Share of each batch centred on foreground (0.33).
    """

    n_spatial = 2

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._slices_cache: dict[tuple[str, int], np.ndarray] = {}

    def _fg_slices(self, case_id: str, cls: int) -> np.ndarray:
        key = (case_id, cls)
        if key not in self._slices_cache:
            self._slices_cache[key] = np.unique(self.dataset[case_id].class_locations[cls][:, 0])
        return self._slices_cache[key]

    def _fill_sample(self, j: int, case_id: str, force_fg: bool, data: np.ndarray, seg: np.ndarray) -> None:
        image, labels, prev = self._case_arrays(case_id)
        locations = self.dataset[case_id].class_locations if force_fg else {}
        voxel = None
        if not locations:
            z = int(np.random.choice(image.shape[1]))
        else:
            classes = sorted(locations)
            cls = classes[int(np.random.choice(len(classes)))]
            z = int(np.random.choice(self._fg_slices(case_id, cls)))
            voxels = locations[cls]
            voxels = voxels[voxels[:, 0] == z][:, 1:]
            voxel = voxels[np.random.choice(len(voxels))]
        lower = self._lower_corner(image.shape[2:], voxel)
        _paste(image[:, z], data[j], lower)
        _paste(labels[:, z], seg[j, :1], lower)
        if prev is not None:
            _paste(prev[:, z], seg[j, 1:2], lower)


def _max_abs_angle(rot: float | Sequence[float]) -> float:
    value = max(abs(r) for r in rot) if isinstance(rot, (tuple, list)) else abs(rot)
    return min(value, np.pi / 2)  # angles beyond 90 degrees add nothing to the extent


def get_patch_size(
    final_patch_size: Sequence[int],
    rot_x: float | Sequence[float],
    rot_y: float | Sequence[float],
    rot_z: float | Sequence[float],
    scale_range: Sequence[float],
    dummy_2d: bool = False,
) -> tuple[int, ...]:
    """Patch the loader must read so that rotated and zoomed-out crops of ``final_patch_size`` stay filled (§7.2).

    The final patch's extent vector is rotated by the largest angle of each axis separately (capped at 90
    degrees), the per-axis maximum of the absolute extents is taken, divided by ``min(scale_range)`` and
    truncated. nnU-Net v1 calls this with the default scale range (0.85, 1.25), not the (0.7, 1.4) the
    training transform then uses; callers keep that quirk.

    Args:
        final_patch_size: Patch the network sees (2 or 3 axes).
        rot_x: Rotation angle range (radians) about axis 0 (the only one used in 2D), or its bound.
        rot_y: Same for axis 1 (3D only).
        rot_z: Same for axis 2 (3D only).
        scale_range: Zoom range; its minimum enlarges the patch.
        dummy_2d: 3D patch augmented slice-wise: axis 0 keeps its size, the in-plane axes use the 2D rule.

    Returns:
        The enlarged patch size, one int per axis.
    """
    patch = np.asarray(final_patch_size, dtype=float)
    if dummy_2d:
        if len(patch) != 3:
            raise BadInputError(f"dummy-2D needs a 3D patch, got {list(final_patch_size)}")
        inplane = get_patch_size(final_patch_size[1:], rot_x, rot_y, rot_z, scale_range)
        return (int(final_patch_size[0]), *inplane)
    ax, ay, az = _max_abs_angle(rot_x), _max_abs_angle(rot_y), _max_abs_angle(rot_z)
    extent = patch.copy()
    if len(patch) == 3:
        for angles in ((ax, 0, 0), (0, ay, 0), (0, 0, az)):
            extent = np.maximum(extent, np.abs(rotate_coords_3d(patch, *angles)))
    elif len(patch) == 2:
        extent = np.maximum(extent, np.abs(rotate_coords_2d(patch, ax)))
    else:
        raise BadInputError(f"patch size must have 2 or 3 axes, got {list(final_patch_size)}")
    extent /= min(scale_range)
    return tuple(int(e) for e in extent)
