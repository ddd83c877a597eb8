"""Synthetic preprocessed folders in the layout of stages/preprocess/models.py, for the data-loading tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.imageio import Geometry
from stages.preprocess.models import CaseProperties, data_file, properties_file, seg_file


def write_case(
    folder: Path,
    case_id: str,
    shape: tuple[int, int, int] = (36, 50, 35),
    n_channels: int = 1,
    n_classes: int = 3,
    seed: int = 0,
    fg_box: tuple[slice, slice, slice] | None = None,
    outside_border: int = 1,
    prev_stage_folder: Path | None = None,
) -> dict:
    """Write ``<case>.npy``, ``<case>_seg.npy`` and ``<case>.json``; return the arrays and stored locations.

    The segmentation is background with a foreground box (labels 1..n_classes-1 split along axis 0) and -1 on
    an ``outside_border`` shell (outside the nonzero mask). ``fg_box=()`` writes a case without foreground.
    """
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = rng.normal(size=(n_channels, *shape)).astype(np.float32)
    seg = np.zeros((1, *shape), dtype=np.int8)
    if outside_border:
        seg[:] = -1
        inner = tuple(slice(outside_border, s - outside_border) for s in shape)
        seg[(0, *inner)] = 0
    locations: dict[int, list[list[int]]] = {}
    if fg_box != ():
        box = fg_box or tuple(slice(s // 3, s // 3 + max(2, s // 4)) for s in shape)
        sub = seg[(0, *box)]
        sub[:] = 1
        if n_classes > 2:
            half = sub.shape[0] // 2
            sub[half:] = 2
        for c in range(1, n_classes):
            vox = np.argwhere(seg[0] == c)
            if len(vox):
                pick = vox[rng.choice(len(vox), min(len(vox), 50), replace=False)]
                locations[c] = pick.tolist()
    np.save(folder / data_file(case_id), data)
    np.save(folder / seg_file(case_id), seg)
    geom = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                    size=tuple(reversed(shape)))
    CaseProperties(
        case_id=case_id, geometry=geom, original_size_of_raw_data=list(shape), original_spacing=[1.0] * 3,
        crop_bbox=[[0, s] for s in shape], size_after_cropping=list(shape), classes=list(range(n_classes)),
        size_after_resampling=list(shape), spacing_after_resampling=[1.0] * 3, class_locations=locations,
    ).save(folder / properties_file(case_id))
    prev = None
    if prev_stage_folder is not None:
        prev_stage_folder.mkdir(parents=True, exist_ok=True)
        prev = np.clip(seg[0], 0, None).astype(np.uint8)
        np.save(prev_stage_folder / f"{case_id}_segFromPrevStage.npy", prev)
    return {"data": data, "seg": seg, "locations": locations, "prev": prev}


def write_cases(folder: Path, n: int = 6, **kwargs) -> list[str]:
    """Write ``n`` cases ``case_000``... with different seeds; return their ids."""
    ids = [f"case_{i:03d}" for i in range(n)]
    for i, case_id in enumerate(ids):
        write_case(folder, case_id, seed=i, **kwargs)
    return ids
