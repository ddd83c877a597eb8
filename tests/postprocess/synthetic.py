"""Small synthetic label maps, probabilities and trained-model folders for the evaluation-side tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.imageio import Geometry, write_image
from stages.predict.export import save_softmax
from stages.preprocess.models import CaseProperties

SHAPE = (8, 10, 12)


def geometry(shape=SHAPE, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> Geometry:
    """Geometry for an array of ``shape`` (z, y, x) with ``spacing`` in array order."""
    return Geometry(spacing=tuple(reversed(spacing)), origin=origin,
                    direction=direction or (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), size=tuple(reversed(shape)))


def write_seg(path: Path, seg: np.ndarray, geo: Geometry | None = None) -> Path:
    """Write a label map (uint8) with a default 1 mm geometry."""
    write_image(seg.astype(np.uint8), geo or geometry(seg.shape), path)
    return path


def two_class_case(shape=SHAPE) -> np.ndarray:
    """Class 1 block touching a class 2 block."""
    seg = np.zeros(shape, np.uint8)
    seg[2:6, 2:8, 2:6] = 1
    seg[2:6, 2:8, 6:9] = 2
    return seg


def one_hot(seg: np.ndarray, num_classes: int, confidence: float = 0.9) -> np.ndarray:
    """Probabilities with ``confidence`` on the true class, the rest shared evenly."""
    rest = (1.0 - confidence) / (num_classes - 1)
    probs = np.full((num_classes, *seg.shape), rest, np.float32)
    for k in range(num_classes):
        probs[k][seg == k] = confidence
    return probs


def write_prediction(folder: Path, case: str, probs: np.ndarray, geo: Geometry | None = None) -> None:
    """``<case>.nii.gz`` (argmax), ``<case>.npz`` (softmax float16) and ``<case>.json`` as predict exports them."""
    geo = geo or geometry(probs.shape[1:])
    folder.mkdir(parents=True, exist_ok=True)
    write_seg(folder / f"{case}.nii.gz", np.argmax(probs, axis=0), geo)
    save_softmax(probs, folder / f"{case}.npz")
    shape = list(probs.shape[1:])
    CaseProperties(
        case_id=case, geometry=geo, original_size_of_raw_data=shape, original_spacing=list(geo.array_spacing),
        crop_bbox=[[0, s] for s in shape], size_after_cropping=shape,
    ).save(folder / f"{case}.json")


def corrupt(probs: np.ndarray, seg: np.ndarray, voxels: list[tuple[int, int, int]], wrong: int) -> np.ndarray:
    """Copy of ``probs`` where the given voxels prefer class ``wrong`` (0.6) over the true class (0.4)."""
    out = probs.copy()
    for v in voxels:
        out[(slice(None), *v)] = 0.0
        out[(wrong, *v)] = 0.6
        out[(int(seg[v]), *v)] = 0.4
    return out


def write_model(results: Path, task: str, configuration: str, gts: dict[str, np.ndarray],
                probs: dict[str, np.ndarray], folds: int = 2, trainer: str = "nnUNetTrainerV2",
                plans: str = "nnUNetPlansv2.1") -> Path:
    """A trained model's folder: ``fold_F/validation_raw/`` (cases split round-robin) and ``gt_niftis/``."""
    folder = results / "nnUNet" / configuration / task / f"{trainer}__{plans}"
    for i, case in enumerate(sorted(gts)):
        write_prediction(folder / f"fold_{i % folds}" / "validation_raw", case, probs[case])
        write_seg(folder / "gt_niftis" / f"{case}.nii.gz", gts[case])
    return folder


def write_speckled_model(results: Path, task: str, speckle_label: int, n_cases: int = 4) -> Path:
    """A 2-fold ``3d_fullres`` model of :func:`two_class_case` cases whose predictions (confident one-hot) carry
    one stray voxel of ``speckle_label``, i.e. a spurious component the postprocessing should remove."""
    gts = {f"case_{i}": two_class_case() for i in range(n_cases)}
    probs = {}
    for case, gt in gts.items():
        pred = gt.copy()
        pred[7, 9, 11] = speckle_label
        probs[case] = one_hot(pred, 3)
    return write_model(results, task, "3d_fullres", gts, probs, folds=2)
