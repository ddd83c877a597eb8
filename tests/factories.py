"""One factory for synthetic volumes and datasets used across the tests.

Synthetic cases are small blobs on a noisy background: label 1 an ellipsoid, label 2 a smaller one touching it,
so segmentation is learnable in a few iterations. Files are written in the nnU-Net v1 layout
(``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``) or the MSD layout (4D multi-modal images).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk


@dataclass
class SyntheticCase:
    """Arrays (z, y, x) and geometry of one synthetic case."""

    case_id: str
    images: list[np.ndarray]
    label: np.ndarray | None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # array order (z, y, x)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # sitk order (x, y, z)
    direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    extra: dict = field(default_factory=dict)


def make_case(
    case_id: str,
    shape: tuple[int, int, int] = (24, 28, 24),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    n_modalities: int = 1,
    n_labels: int = 3,
    seed: int = 0,
    zero_border: int = 0,
) -> SyntheticCase:
    """A case with ``n_labels`` classes (incl. background) as nested ellipsoids plus noise.

    Args:
        case_id: Case identifier.
        shape: Array shape (z, y, x).
        spacing: Spacing in array order.
        n_modalities: Number of image channels.
        n_labels: Number of classes including background.
        seed: Random seed (position jitter and noise).
        zero_border: Width of an all-zero border (to exercise crop-to-nonzero).
    """
    rng = np.random.RandomState(seed)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    center = [s / 2 + rng.uniform(-s / 10, s / 10) for s in shape]
    radii = [s / 4 for s in shape]
    dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii))
    label = np.zeros(shape, np.uint8)
    if n_labels >= 2:
        label[dist < 1.0] = 1
    if n_labels >= 3:
        label[(dist < 1.0) & (grids[0] > center[0])] = 2
    for k in range(3, n_labels):
        label[dist < 1.0 / (k + 1)] = k
    images = []
    for m in range(n_modalities):
        img = 100.0 + 50.0 * label.astype(np.float32) * (1 + m) + rng.normal(0, 10, shape).astype(np.float32)
        images.append(img.astype(np.float32))
    if zero_border:
        b = zero_border
        for img in images:
            mask = np.zeros(shape, bool)
            mask[b:-b, b:-b, b:-b] = True
            img[~mask] = 0
        inner = np.zeros(shape, bool)
        inner[b:-b, b:-b, b:-b] = True
        label[~inner] = 0
    return SyntheticCase(case_id, images, label, spacing=spacing)


def _to_sitk(arr: np.ndarray, case: SyntheticCase) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in reversed(case.spacing)))
    img.SetOrigin(case.origin)
    img.SetDirection(case.direction)
    return img


def dataset_json(
    cases: list[SyntheticCase],
    n_modalities: int = 1,
    n_labels: int = 3,
    modality_names: list[str] | None = None,
    test_ids: list[str] | None = None,
    name: str = "Synthetic",
) -> dict:
    """A dataset.json dict (MSD / nnU-Net v1 format) for ``cases``."""
    names = modality_names or (["MRI"] + [f"MR{i}" for i in range(1, n_modalities)])[:n_modalities]
    return {
        "name": name,
        "description": "synthetic test data",
        "reference": "nnkube tests",
        "licence": "CC0",
        "release": "0.0",
        "tensorImageSize": "4D" if n_modalities > 1 else "3D",
        "modality": {str(i): n for i, n in enumerate(names)},
        "labels": {str(i): ("background" if i == 0 else f"class{i}") for i in range(n_labels)},
        "numTraining": len(cases),
        "numTest": len(test_ids or []),
        "training": [
            {"image": f"./imagesTr/{c.case_id}.nii.gz", "label": f"./labelsTr/{c.case_id}.nii.gz"} for c in cases
        ],
        "test": [f"./imagesTs/{t}.nii.gz" for t in (test_ids or [])],
    }


def write_nnunet_task(
    root: Path,
    cases: list[SyntheticCase],
    test_cases: list[SyntheticCase] | None = None,
    modality_names: list[str] | None = None,
    n_labels: int = 3,
    suffix: str = ".nii.gz",
) -> Path:
    """Write ``cases`` in the nnU-Net v1 layout under ``root`` (created) and return ``root``."""
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    test_cases = test_cases or []
    if test_cases:
        (root / "imagesTs").mkdir(parents=True, exist_ok=True)
    n_mod = len(cases[0].images)
    for c in cases:
        for m, img in enumerate(c.images):
            sitk.WriteImage(_to_sitk(img, c), str(root / "imagesTr" / f"{c.case_id}_{m:04d}{suffix}"))
        if c.label is not None:
            sitk.WriteImage(_to_sitk(c.label, c), str(root / "labelsTr" / f"{c.case_id}{suffix}"))
    for c in test_cases:
        for m, img in enumerate(c.images):
            sitk.WriteImage(_to_sitk(img, c), str(root / "imagesTs" / f"{c.case_id}_{m:04d}{suffix}"))
    dj = dataset_json(cases, n_mod, n_labels, modality_names, [c.case_id for c in test_cases])
    (root / "dataset.json").write_text(json.dumps(dj, indent=2))
    return root


def write_msd_task(root: Path, cases: list[SyntheticCase], n_labels: int = 3,
                   modality_names: list[str] | None = None) -> Path:
    """Write ``cases`` in the MSD layout (multi-modal images as one 4D file) under ``root``."""
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    n_mod = len(cases[0].images)
    for c in cases:
        if n_mod == 1:
            img = _to_sitk(c.images[0], c)
        else:
            img = sitk.JoinSeries([_to_sitk(i, c) for i in c.images])
        sitk.WriteImage(img, str(root / "imagesTr" / f"{c.case_id}.nii.gz"))
        if c.label is not None:
            sitk.WriteImage(_to_sitk(c.label, c), str(root / "labelsTr" / f"{c.case_id}.nii.gz"))
    dj = dataset_json(cases, n_mod, n_labels, modality_names)
    (root / "dataset.json").write_text(json.dumps(dj, indent=2))
    return root


def make_cases(n: int, prefix: str = "case", **kwargs) -> list[SyntheticCase]:
    """``n`` cases ``prefix_000`` ... with seeds 0..n-1."""
    return [make_case(f"{prefix}_{i:03d}", seed=i, **kwargs) for i in range(n)]
