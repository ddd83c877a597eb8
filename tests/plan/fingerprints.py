"""Synthetic fingerprints for planner tests: cases with given spacings and cropped shapes."""

from __future__ import annotations

from collections.abc import Sequence

from stages.fingerprint.models import CaseFingerprint, Fingerprint
from stages.plan.models import IntensityStats


def synthetic_fingerprint(
    n_cases: int,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    shape: Sequence[int] = (36, 50, 35),
    modalities: Sequence[str] = ("MRI",),
    n_classes: int = 2,
    size_reduction: float = 1.0,
    spacings: Sequence[Sequence[float]] | None = None,
    shapes: Sequence[Sequence[int]] | None = None,
    size_reductions: Sequence[float] | None = None,
    stats: IntensityStats | None = None,
) -> Fingerprint:
    """A fingerprint of ``n_cases`` cases; per-case lists override the shared spacing/shape/reduction."""
    stats = stats or IntensityStats(mean=10.0, sd=2.0, median=9.0, mn=0.0, mx=30.0, percentile_99_5=25.0,
                                    percentile_00_5=1.0)
    cases = []
    for i in range(n_cases):
        sp = list(spacings[i]) if spacings is not None else list(spacing)
        sh = list(shapes[i]) if shapes is not None else list(shape)
        red = size_reductions[i] if size_reductions is not None else size_reduction
        cases.append(CaseFingerprint(case_id=f"case_{i:03d}", shape_before_crop=sh, shape_after_crop=sh,
                                     spacing=sp, size_reduction=red))
    return Fingerprint(
        dataset_name="synthetic",
        modalities=dict(enumerate(modalities)),
        all_classes=list(range(1, n_classes + 1)),
        cases=cases,
        intensity_properties={i: stats for i in range(len(modalities))},
    )
