"""Experiment planners of plans v2.1: target spacing, patch, batch and network topology (spec §3.1-§3.9).

A planner turns a :class:`~stages.fingerprint.models.Fingerprint` into a :class:`~stages.plan.models.Plans`
document. Planners are classes so that a variant only overrides what it changes (a memory target, a constant,
one decision); :mod:`stages.plan.registry` finds every subclass by name. All per-axis arithmetic follows the
reference planner operation for operation (numpy rounding, argsort tie-breaking), so that plans are identical.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import numpy as np

from stages.errors import BadInputError, DatasetError
from stages.fingerprint.models import Fingerprint
from stages.plan.models import DATA_IDENTIFIER, PLANS_IDENTIFIER, IntensityStats, Plans, StagePlan
from stages.plan.topology import Topology, compute_approx_vram_consumption, get_pool_and_conv_props

log = logging.getLogger(__name__)

#: Generic_UNet reference constants (spec §3): activation proxy that fits the reference GPU.
VRAM_REFERENCE_3D = 520_000_000
BASE_FEATURES_REFERENCE_3D = 30
DEFAULT_BATCH_SIZE_3D = 2
VRAM_REFERENCE_2D = 19_739_648
DEFAULT_BATCH_SIZE_2D = 50
#: The reference memory values correspond to this GPU memory (GB); variants scale them by target / this.
REFERENCE_GPU_MEMORY_GB = 8


class PlanningError(BadInputError):
    """The dataset cannot be planned with this planner (e.g. 2D slices too large for a batch of 2)."""


class ExperimentPlanner:
    """Base planner: the decisions shared by 2D and 3D planning (spec §3.3, §3.8, §3.10).

    Subclasses set :attr:`dimension` and :attr:`configuration` and implement :meth:`plan_stage`; one that plans
    more than the stage at the target spacing (the 3D cascade) extends :meth:`plan_stages`.
    """

    dimension: ClassVar[Literal["2D", "3D"]]
    #: The configuration planned at the target spacing ("2d", "3d_fullres").
    configuration: ClassVar[str]
    plans_identifier: ClassVar[str] = PLANS_IDENTIFIER
    data_identifier: ClassVar[str] = DATA_IDENTIFIER
    preprocessor_name: ClassVar[str] = "GenericPreprocessor"
    base_num_features: ClassVar[int] = 32
    max_num_features: ClassVar[int] = 320
    min_feature_map_edge: ClassVar[int] = 4
    max_num_pool: ClassVar[int] = 999
    min_batch_size: ClassVar[int] = 2
    batch_max_dataset_fraction: ClassVar[float] = 0.05
    target_spacing_percentile: ClassVar[float] = 50
    conv_per_stage: ClassVar[int] = 2
    #: GPU memory the plans are sized for; the VRAM reference scales with this / 8 GB.
    gpu_memory_gb: ClassVar[float] = REFERENCE_GPU_MEMORY_GB

    @classmethod
    def name(cls) -> str:
        """The name this planner is selected by (its class name)."""
        return cls.__name__

    # ---- dataset-level decisions -------------------------------------------------------------------------
    def get_target_spacing(self, fingerprint: Fingerprint) -> np.ndarray:
        """Per-axis percentile (median) of the case spacings, array order (spec §3.2)."""
        return np.percentile(np.vstack(fingerprint.all_spacings), self.target_spacing_percentile, 0)

    def normalization_schemes(self, fingerprint: Fingerprint) -> dict[int, str]:
        """Per modality: ``CT`` for names "CT"/"ct", ``noNorm`` for "noNorm", else ``nonCT`` (spec §3.8)."""
        schemes = {}
        for i, name in sorted(fingerprint.modalities.items()):
            schemes[i] = "CT" if name in ("CT", "ct") else "noNorm" if name == "noNorm" else "nonCT"
        return schemes

    def use_mask_for_norm(self, fingerprint: Fingerprint) -> dict[int, bool]:
        """Per modality: normalize within the nonzero mask? (spec §3.8).

        False if the name contains "CT"; otherwise True iff the median crop size reduction is below 0.75.
        """
        median_reduction = float(np.median([c.size_reduction for c in fingerprint.cases]))
        modalities = sorted(fingerprint.modalities.items())
        flags = {i: ("CT" not in name and median_reduction < 3 / 4.0) for i, name in modalities}
        log.info("median size reduction by cropping %.4f -> use nonzero mask for normalization: %s",
                 median_reduction, flags)
        return flags

    def vram_reference(self) -> float:
        """The memory proxy value a stage may reach (scaled by :attr:`gpu_memory_gb`)."""
        raise NotImplementedError

    def plan_stage(self, current_spacing: np.ndarray, original_spacing: np.ndarray, original_shape: np.ndarray,
                   num_cases: int, num_modalities: int, num_classes: int) -> StagePlan:
        """Plan one stage at ``current_spacing``; all arrays in transposed order.

        Args:
            current_spacing: Spacing of this stage.
            original_spacing: Spacing ``original_shape`` refers to.
            original_shape: Median shape of the dataset at ``original_spacing``.
            num_cases: Number of training cases.
            num_modalities: Input channels.
            num_classes: Classes including background.
        """
        raise NotImplementedError

    def plan_stages(
        self, target_spacing: np.ndarray, median_shape: np.ndarray, transpose_forward: list[int],
        num_cases: int, num_modalities: int, num_classes: int,
    ) -> list[StagePlan]:
        """Plan the stages (low to high resolution) from spacing and median shape in array order.

        This base plans the one stage of :attr:`configuration` at the target spacing.
        """
        target_t = np.array(target_spacing)[transpose_forward]
        median_t = np.array(median_shape)[transpose_forward]
        log.info("generating configuration for %s", self.configuration)
        return [self.plan_stage(target_t, target_t, median_t, num_cases, num_modalities, num_classes)]

    # ---- shared building blocks --------------------------------------------------------------------------
    def topology(self, spacing: np.ndarray, patch: np.ndarray) -> Topology:
        """:func:`get_pool_and_conv_props` with this planner's constants."""
        return get_pool_and_conv_props(spacing, patch, self.min_feature_map_edge, self.max_num_pool)

    def vram_estimate(self, topo: Topology, num_modalities: int, num_classes: int,
                      base_num_features: int | None = None) -> int:
        """Memory proxy of a topology (spec §3.5)."""
        return compute_approx_vram_consumption(
            topo.patch_size, topo.pool_op_kernel_sizes, base_num_features or self.base_num_features,
            self.max_num_features, num_modalities, num_classes, self.conv_per_stage,
        )

    def fit_patch(
        self, spacing: np.ndarray, patch: np.ndarray, median_here: np.ndarray, num_modalities: int,
        num_classes: int, first_base_num_features: int | None = None,
    ) -> tuple[Topology, int]:
        """Topology of ``patch``, shrunk until its memory proxy fits :meth:`vram_reference` (spec §3.6 step 5).

        Each step shrinks the axis with the largest patch/median ratio by the divisibility factor that the
        topology has after subtracting the current factor from that axis.

        Returns:
            ``(topology, estimate)`` of the final patch.
        """
        ref = self.vram_reference()
        topo = self.topology(spacing, patch)
        est = self.vram_estimate(topo, num_modalities, num_classes, first_base_num_features)
        while est > ref:
            shape = np.array(topo.patch_size)
            axis = np.argsort(shape / median_here)[-1]
            trial = shape.copy()
            trial[axis] -= topo.must_be_divisible_by[axis]
            shape[axis] -= self.topology(spacing, trial).must_be_divisible_by[axis]
            if shape[axis] < 1:
                raise PlanningError(f"{self.name()}: no patch fits the memory reference {ref:.0f}")
            topo = self.topology(spacing, shape)
            est = self.vram_estimate(topo, num_modalities, num_classes)
        return topo, est

    def batch_cap(self, median_here: np.ndarray, num_cases: int, patch: list[int]) -> int:
        """Batch size at which one batch covers ``batch_max_dataset_fraction`` of the dataset's voxels."""
        dataset_voxels = np.prod(median_here, dtype=np.int64) * num_cases
        return int(np.round(self.batch_max_dataset_fraction * dataset_voxels / np.prod(patch, dtype=np.int64)))

    @staticmethod
    def make_stage(batch_size: int, topo: Topology, median_here: np.ndarray, current_spacing: np.ndarray,
                   original_spacing: np.ndarray, do_dummy_2D_data_aug: bool) -> StagePlan:
        """Assemble a :class:`StagePlan` from numpy values."""
        return StagePlan(
            batch_size=int(batch_size),
            num_pool_per_axis=[int(v) for v in topo.num_pool_per_axis],
            patch_size=[int(v) for v in topo.patch_size],
            median_patient_size_in_voxels=[int(v) for v in median_here],
            current_spacing=[float(v) for v in current_spacing],
            original_spacing=[float(v) for v in original_spacing],
            do_dummy_2D_data_aug=bool(do_dummy_2D_data_aug),
            pool_op_kernel_sizes=[[int(k) for k in s] for s in topo.pool_op_kernel_sizes],
            conv_kernel_sizes=[[int(k) for k in s] for s in topo.conv_kernel_sizes],
        )

    # ---- the whole plan ----------------------------------------------------------------------------------
    def plan(self, fingerprint: Fingerprint) -> Plans:
        """Plan this dimensionality's configurations for ``fingerprint`` (spec §3.3, §3.10)."""
        spacings = np.vstack(fingerprint.all_spacings).astype(np.float64)
        sizes = np.vstack(fingerprint.all_sizes).astype(np.float64)
        dim = spacings.shape[1]
        use_mask = self.use_mask_for_norm(fingerprint)
        schemes = self.normalization_schemes(fingerprint)
        target = np.asarray(self.get_target_spacing(fingerprint), dtype=np.float64)
        new_shapes = spacings / target * sizes
        worst = int(np.argmax(target))
        transpose_forward = [worst] + [i for i in range(dim) if i != worst]
        transpose_backward = [transpose_forward.index(i) for i in range(dim)]
        median_shape = np.median(new_shapes, 0)
        log.info("%s: target spacing %s, median shape %s (min %s, max %s), transpose_forward %s",
                 self.name(), _fmt(target), _fmt(median_shape), _fmt(new_shapes.min(0)),
                 _fmt(new_shapes.max(0)), transpose_forward)
        num_classes = len(fingerprint.all_classes)
        stages = self.plan_stages(target, median_shape, transpose_forward, len(fingerprint.cases),
                                  fingerprint.num_modalities, num_classes + 1)
        plans = Plans(
            plans_identifier=self.plans_identifier,
            planner=self.name(),
            dimension=self.dimension,
            num_stages=len(stages),
            num_modalities=fingerprint.num_modalities,
            modalities=dict(sorted(fingerprint.modalities.items())),
            normalization_schemes=schemes,
            use_mask_for_norm=use_mask,
            intensity_properties=self._ct_intensity_properties(fingerprint, schemes),
            num_classes=num_classes,
            all_classes=list(fingerprint.all_classes),
            base_num_features=self.base_num_features,
            conv_per_stage=self.conv_per_stage,
            transpose_forward=transpose_forward,
            transpose_backward=transpose_backward,
            data_identifier=self.data_identifier,
            preprocessor_name=self.preprocessor_name,
            plans_per_stage=dict(enumerate(stages)),
            original_spacings=fingerprint.all_spacings,
            original_sizes=fingerprint.all_sizes,
            case_ids=fingerprint.case_ids,
        )
        self.log_plans(plans)
        return plans

    def _ct_intensity_properties(self, fingerprint: Fingerprint,
                                 schemes: dict[int, str]) -> dict[int, IntensityStats] | None:
        out = {}
        for i, scheme in schemes.items():
            if scheme != "CT":
                continue
            stats = fingerprint.intensity_properties.get(i)
            if stats is None or any(np.isnan(v) for v in stats.model_dump().values()):
                raise DatasetError(
                    f"modality {i} ({fingerprint.modalities[i]!r}) uses CT normalization but the fingerprint has "
                    "no foreground intensity statistics for it (no labelled foreground voxels?)"
                )
            out[i] = stats
        return out or None

    def log_plans(self, plans: Plans) -> None:
        """Log every stage's configuration the way nnU-Net prints it."""
        names = (["3d_lowres", "3d_fullres"] if plans.num_stages > 1 else ["3d_fullres"]) \
            if plans.dimension == "3D" else ["2d"]
        for stage, name in zip(sorted(plans.plans_per_stage), names):
            s = plans.plans_per_stage[stage]
            log.info("%s (stage %d): patch %s, batch size %d, spacing %s, median shape %s, pools per axis %s, "
                     "pool kernels %s, conv kernels %s, dummy 2D aug %s", name, stage, s.patch_size, s.batch_size,
                     _fmt(s.current_spacing), s.median_patient_size_in_voxels, s.num_pool_per_axis,
                     s.pool_op_kernel_sizes, s.conv_kernel_sizes, s.do_dummy_2D_data_aug)
        log.info("normalization %s, use mask for norm %s, transpose forward %s backward %s",
                 plans.normalization_schemes, plans.use_mask_for_norm, plans.transpose_forward,
                 plans.transpose_backward)


def _fmt(values) -> list[float]:
    return [round(float(v), 4) for v in values]
