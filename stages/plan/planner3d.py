"""The 3D planner of plans v2.1 and example variants sized for larger GPUs.

Plans 3d_fullres and, for large images, the 3d_lowres stage of the cascade (spec §3.1, §3.6, §3.7).
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np

from stages.fingerprint.models import Fingerprint
from stages.plan.base import (
    BASE_FEATURES_REFERENCE_3D,
    DEFAULT_BATCH_SIZE_3D,
    REFERENCE_GPU_MEMORY_GB,
    VRAM_REFERENCE_3D,
    ExperimentPlanner,
)
from stages.plan.models import StagePlan

log = logging.getLogger(__name__)


class ExperimentPlanner3D_v21(ExperimentPlanner):  # noqa: N801  (nnU-Net name)
    """nnU-Net's default 3D planner (``ExperimentPlanner3D_v21``)."""

    dimension = "3D"
    configuration = "3d_fullres"
    preprocessor_name = "GenericPreprocessor"
    max_num_features = 320
    anisotropy_threshold: ClassVar[float] = 3
    #: The median image must hold at least this many patches for a cascade to be planned.
    cascade_min_patches_per_image: ClassVar[float] = 4
    #: Initial patch edge (voxels) along the coarsest axis before clipping to the median shape.
    initial_patch_edge: ClassVar[int] = 512

    def get_target_spacing(self, fingerprint: Fingerprint) -> np.ndarray:
        """Median spacing, with the coarse axis of anisotropic data set to its 10th percentile (spec §3.1)."""
        spacings = np.vstack(fingerprint.all_spacings)
        target = np.percentile(spacings, self.target_spacing_percentile, 0)
        target_size = np.percentile(np.vstack(fingerprint.all_sizes), self.target_spacing_percentile, 0)
        worst = int(np.argmax(target))
        others = [i for i in range(len(target)) if i != worst]
        other_spacings = [target[i] for i in others]
        other_sizes = [target_size[i] for i in others]
        aniso_spacing = target[worst] > self.anisotropy_threshold * max(other_spacings)
        aniso_voxels = target_size[worst] * self.anisotropy_threshold < min(other_sizes)
        if aniso_spacing and aniso_voxels:
            coarse = np.percentile(spacings[:, worst], 10)
            if coarse < max(other_spacings):
                coarse = max(max(other_spacings), coarse) + 1e-5
            log.info("anisotropic dataset: axis %d target spacing %.5f instead of the median %.5f",
                     worst, coarse, target[worst])
            target[worst] = coarse
        return target

    def vram_reference(self) -> float:
        """``520e6 * 32 / 30`` scaled by ``gpu_memory_gb / 8``."""
        ref = VRAM_REFERENCE_3D * self.base_num_features / BASE_FEATURES_REFERENCE_3D
        return ref * self.gpu_memory_gb / REFERENCE_GPU_MEMORY_GB

    def plan_stage(self, current_spacing: np.ndarray, original_spacing: np.ndarray, original_shape: np.ndarray,
                   num_cases: int, num_modalities: int, num_classes: int) -> StagePlan:
        """One 3D stage at ``current_spacing`` (spec §3.6); arguments as :meth:`ExperimentPlanner.plan_stage`."""
        current_spacing = np.asarray(current_spacing, dtype=np.float64)
        median_here = np.round(original_spacing / current_spacing * original_shape).astype(int)
        patch = 1 / current_spacing
        patch /= patch.mean()
        patch *= 1 / min(patch) * self.initial_patch_edge
        patch = np.round(patch).astype(int)
        patch = np.array([min(i, j) for i, j in zip(patch, median_here)])
        topo, est = self.fit_patch(current_spacing, patch, median_here, num_modalities, num_classes)
        ref = self.vram_reference()
        batch_size = int(np.floor(max(ref / est, 1) * DEFAULT_BATCH_SIZE_3D))
        cap = max(self.batch_cap(median_here, num_cases, topo.patch_size), self.min_batch_size)
        batch_size = max(1, min(batch_size, cap))
        dummy_2d = max(topo.patch_size) / topo.patch_size[0] > self.anisotropy_threshold
        return self.make_stage(batch_size, topo, median_here, current_spacing, original_spacing, dummy_2d)

    def plan_stages(
        self, target_spacing: np.ndarray, median_shape: np.ndarray, transpose_forward: list[int],
        num_cases: int, num_modalities: int, num_classes: int,
    ) -> list[StagePlan]:
        """3d_fullres, preceded by 3d_lowres when the median image is large (spec §3.7)."""
        [full] = super().plan_stages(target_spacing, median_shape, transpose_forward, num_cases, num_modalities,
                                     num_classes)
        patch_voxels = np.prod(full.patch_size, dtype=np.int64)
        if np.prod(median_shape) / patch_voxels < self.cascade_min_patches_per_image:
            return [full]
        log.info("generating configuration for 3d_lowres")
        target_t = np.array(target_spacing)[transpose_forward]
        median_t = np.array(median_shape)[transpose_forward]
        lowres_spacing = np.array(target_spacing, dtype=np.float64)
        num_voxels = np.prod(median_shape, dtype=np.float64)
        low = None
        while num_voxels > self.cascade_min_patches_per_image * patch_voxels:
            max_spacing = max(lowres_spacing)
            coarser = (max_spacing / lowres_spacing) > 2
            if np.any(coarser):
                lowres_spacing[coarser] *= 1.01
            else:
                lowres_spacing *= 1.01
            num_voxels = np.prod(target_spacing / lowres_spacing * median_shape, dtype=np.float64)
            low = self.plan_stage(lowres_spacing[transpose_forward], target_t, median_t, num_cases,
                                  num_modalities, num_classes)
            patch_voxels = np.prod(low.patch_size, dtype=np.int64)
        if low is not None and 2 * np.prod(low.median_patient_size_in_voxels, dtype=np.int64) < np.prod(
            full.median_patient_size_in_voxels, dtype=np.int64
        ):
            return [low, full]
        log.info("no 3d_lowres: the lowres median image would not be less than half the fullres one")
        return [full]


class _GpuMemoryVariant(ExperimentPlanner3D_v21):
    """Base of the examples below: the same planner sized for a larger GPU (``gpu_memory_gb``)."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        gb = int(cls.gpu_memory_gb)
        cls.plans_identifier = f"{ExperimentPlanner3D_v21.plans_identifier}_{gb}GB"
        cls.data_identifier = f"{ExperimentPlanner3D_v21.data_identifier}_{gb}GB"


class ExperimentPlanner3D_v21_11GB(_GpuMemoryVariant):  # noqa: N801  (nnU-Net name)
    """3D v2.1 planner for an 11 GB GPU (reference memory x 11/8)."""

    gpu_memory_gb = 11


class ExperimentPlanner3D_v21_16GB(_GpuMemoryVariant):  # noqa: N801  (nnU-Net name)
    """3D v2.1 planner for a 16 GB GPU (reference memory x 16/8)."""

    gpu_memory_gb = 16


class ExperimentPlanner3D_v21_32GB(_GpuMemoryVariant):  # noqa: N801  (nnU-Net name)
    """3D v2.1 planner for a 32 GB GPU (reference memory x 32/8)."""

    gpu_memory_gb = 32
