"""The 2D planner of plans v2.1: one stage of in-plane slices at the median spacing (spec §3.2, §3.9)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from stages.plan.base import (
    DEFAULT_BATCH_SIZE_2D,
    REFERENCE_GPU_MEMORY_GB,
    VRAM_REFERENCE_2D,
    ExperimentPlanner,
    PlanningError,
)
from stages.plan.models import DATA_IDENTIFIER, StagePlan


class ExperimentPlanner2D_v21(ExperimentPlanner):  # noqa: N801  (nnU-Net name)
    """nnU-Net's default 2D planner (``ExperimentPlanner2D_v21``).

    The target spacing is the plain per-axis median (no anisotropy rule). The first memory estimate uses 30 base
    features and the shrink loop 32, as the reference does; keeping that quirk keeps the plans identical.
    """

    dimension = "2D"
    configuration = "2d"
    data_identifier = f"{DATA_IDENTIFIER}_2D"
    preprocessor_name = "PreprocessorFor2D"
    max_num_features = 512
    #: Base features of the first memory estimate (reference quirk, spec §3.9 / §16.3).
    initial_estimate_base_features: ClassVar[int] = 30

    def vram_reference(self) -> float:
        """``19,739,648 * 50 / 2`` scaled by ``gpu_memory_gb / 8``."""
        ref = VRAM_REFERENCE_2D * DEFAULT_BATCH_SIZE_2D / 2
        return ref * self.gpu_memory_gb / REFERENCE_GPU_MEMORY_GB

    def plan_stage(self, current_spacing: np.ndarray, original_spacing: np.ndarray, original_shape: np.ndarray,
                   num_cases: int, num_modalities: int, num_classes: int) -> StagePlan:
        """The 2D stage (spec §3.9); arrays in transposed order, axis 0 is the slice axis.

        Raises:
            PlanningError: If not even a batch of ``min_batch_size`` slices fits the memory reference.
        """
        current_spacing = np.asarray(current_spacing, dtype=np.float64)
        median_here = np.round(original_spacing / current_spacing * original_shape).astype(int)
        patch = median_here[1:]
        topo, est = self.fit_patch(current_spacing[1:], patch, median_here[1:], num_modalities, num_classes,
                                   first_base_num_features=self.initial_estimate_base_features)
        batch_size = int(np.floor(self.vram_reference() / est) * 2)
        if batch_size < self.min_batch_size:
            raise PlanningError(
                f"{self.name()}: 2D slices of {topo.patch_size} voxels are too large for a batch of "
                f"{self.min_batch_size} (estimated batch {batch_size}); plan without 2D (--no-2d)"
            )
        cap = self.batch_cap(median_here, num_cases, topo.patch_size)
        batch_size = max(1, min(batch_size, cap))
        return self.make_stage(batch_size, topo, median_here, current_spacing, original_spacing, False)
