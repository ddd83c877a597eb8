"""Segmentation metrics per label from confusion counts (nnU-Net v1's evaluator, spec §6.8).

All metrics derive from the four counts of a binary comparison, so a case is reduced to counts once and every
metric is a formula over them. Metrics that are undefined (0/0) are NaN, and NaNs are excluded from means.
"""

from __future__ import annotations

import math

import numpy as np

# Metric names as nnU-Net writes them in summary.json (alphabetical there), plus raw counts and volumes.
METRIC_NAMES = (
    "Accuracy",
    "Dice",
    "False Discovery Rate",
    "False Negative Rate",
    "False Omission Rate",
    "False Positive Rate",
    "Jaccard",
    "Negative Predictive Value",
    "Precision",
    "Recall",
    "Total Positives Reference",
    "Total Positives Test",
    "True Negative Rate",
    "TP",
    "FP",
    "FN",
    "TN",
    "Volume Reference",
    "Volume Test",
)


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else math.nan


def confusion_counts(test: np.ndarray, reference: np.ndarray) -> tuple[int, int, int, int]:
    """TP, FP, FN, TN of two boolean masks of equal shape."""
    if test.shape != reference.shape:
        raise ValueError(f"shape mismatch: prediction {test.shape} vs reference {reference.shape}")
    tp = int(np.count_nonzero(test & reference))
    fp = int(np.count_nonzero(test & ~reference))
    fn = int(np.count_nonzero(~test & reference))
    tn = int(test.size - tp - fp - fn)
    return tp, fp, fn, tn


def metrics_from_counts(tp: int, fp: int, fn: int, tn: int, voxel_volume: float = 1.0) -> dict[str, float]:
    """Every metric of :data:`METRIC_NAMES` from confusion counts.

    Dice and Jaccard are NaN when both prediction and reference are empty (nnU-Net's convention), so such
    cases do not count in the mean.
    """
    n = tp + fp + fn + tn
    ref_pos, test_pos = tp + fn, tp + fp
    return {
        "Accuracy": _div(tp + tn, n),
        "Dice": _div(2 * tp, 2 * tp + fp + fn),
        "False Discovery Rate": _div(fp, tp + fp),
        "False Negative Rate": _div(fn, tp + fn),
        "False Omission Rate": _div(fn, fn + tn),
        "False Positive Rate": _div(fp, fp + tn),
        "Jaccard": _div(tp, tp + fp + fn),
        "Negative Predictive Value": _div(tn, tn + fn),
        "Precision": _div(tp, tp + fp),
        "Recall": _div(tp, tp + fn),
        "Total Positives Reference": float(ref_pos),
        "Total Positives Test": float(test_pos),
        "True Negative Rate": _div(tn, tn + fp),
        "TP": float(tp),
        "FP": float(fp),
        "FN": float(fn),
        "TN": float(tn),
        "Volume Reference": float(ref_pos) * voxel_volume,
        "Volume Test": float(test_pos) * voxel_volume,
    }


def label_metrics(
    prediction: np.ndarray, reference: np.ndarray, labels: list[int], voxel_volume: float = 1.0
) -> dict[str, dict[str, float]]:
    """Metrics for every label value: ``{"0": {...}, "1": {...}}`` (string keys, as in summary.json)."""
    out = {}
    for label in labels:
        counts = confusion_counts(prediction == label, reference == label)
        out[str(label)] = metrics_from_counts(*counts, voxel_volume=voxel_volume)
    return out


def nanmean(values: list[float]) -> float:
    """Mean ignoring NaN; NaN if nothing is left."""
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    return float(arr.mean()) if arr.size else math.nan
