"""Plans for preprocessing tests, built directly (the planner is tested elsewhere)."""

from __future__ import annotations

import pytest

from stages.plan.models import IntensityStats, Plans, StagePlan


def make_plans(
    spacing=(1.0, 1.0, 1.0),
    transpose_forward=(0, 1, 2),
    dimension: str = "3D",
    schemes=None,
    use_mask=None,
    intensity=None,
    all_classes=(1, 2),
    extra_stages=(),
) -> Plans:
    """Plans with one stage of ``spacing`` (transposed order), plus optional lower-resolution stages first."""
    tf = list(transpose_forward)
    schemes = schemes or {0: "nonCT"}
    stages = [*extra_stages, spacing]

    def stage(sp):
        return StagePlan(
            batch_size=2, num_pool_per_axis=[2, 2, 2], patch_size=[16, 16, 16],
            median_patient_size_in_voxels=[24, 28, 24], current_spacing=list(sp), original_spacing=[1.0] * 3,
            do_dummy_2D_data_aug=False, pool_op_kernel_sizes=[[2, 2, 2]] * 2, conv_kernel_sizes=[[3, 3, 3]] * 3,
        )

    return Plans(
        planner="test", dimension=dimension, num_stages=len(stages), num_modalities=len(schemes),
        modalities={c: ("CT" if s == "CT" else "MRI") for c, s in schemes.items()},
        normalization_schemes=schemes, use_mask_for_norm=use_mask or {c: False for c in schemes},
        intensity_properties=intensity,
        num_classes=len(all_classes), all_classes=list(all_classes),
        transpose_forward=tf, transpose_backward=[tf.index(i) for i in range(3)],
        data_identifier="nnUNetData_plans_v2.1" + ("_2D" if dimension == "2D" else ""),
        preprocessor_name="PreprocessorFor2D" if dimension == "2D" else "GenericPreprocessor",
        plans_per_stage={i: stage(sp) for i, sp in enumerate(stages)},
    )


@pytest.fixture
def plans_factory():
    """The :func:`make_plans` builder."""
    return make_plans


CT_STATS = IntensityStats(mean=100.0, sd=20.0, median=95.0, mn=-50.0, mx=400.0, percentile_99_5=300.0,
                          percentile_00_5=0.0)
