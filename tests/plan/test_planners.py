"""Experiment planning rules (spec §3.1-§3.11) on synthetic fingerprints."""

from __future__ import annotations

import numpy as np
import pytest

from stages.errors import BadInputError, DatasetError
from stages.plan.base import PlanningError
from stages.plan.experiment import configurations, plan_experiment
from stages.plan.models import IntensityStats
from stages.plan.planner2d import ExperimentPlanner2D_v21
from stages.plan.planner3d import ExperimentPlanner3D_v21, ExperimentPlanner3D_v21_32GB
from tests.plan.fingerprints import synthetic_fingerprint


def _plan(fp, **kw):
    return plan_experiment(fp, **kw)


# ---- worked examples (spec §3.11) ----------------------------------------------------------------------------
def test_hippocampus_worked_example_260_cases():
    p3, p2 = _plan(synthetic_fingerprint(260, (1.0, 1.0, 1.0), (36, 50, 35)))
    assert p3.num_stages == 1 and not p3.has_cascade
    full = p3.configuration("3d_fullres")
    assert full.patch_size == [40, 56, 40]
    assert full.num_pool_per_axis == [3, 3, 3]
    assert full.pool_op_kernel_sizes == [[2, 2, 2]] * 3
    assert all(k == [3, 3, 3] for k in full.conv_kernel_sizes)
    # limited by the 5 % cap: round(0.05 * 36*50*35*260 / (40*56*40)) = 9
    assert full.batch_size == round(0.05 * 36 * 50 * 35 * 260 / (40 * 56 * 40)) == 9
    two = p2.configuration("2d")
    assert two.patch_size == [56, 40]
    assert two.batch_size == 366
    assert configurations(p3, p2) == ["2d", "3d_fullres"]
    with pytest.raises(BadInputError):
        p3.configuration("3d_lowres")


def test_batch_cap_uses_bankers_rounding():
    # 208 cases: 0.05 * 36*50*35*208 / (56*40) = 292.5 -> numpy/Python round gives 292 (half to even)
    p3, p2 = _plan(synthetic_fingerprint(208, (1.0, 1.0, 1.0), (36, 50, 35)))
    assert 0.05 * 36 * 50 * 35 * 208 / (56 * 40) == 292.5
    assert p2.configuration("2d").batch_size == 292
    assert p3.configuration("3d_fullres").batch_size == 7


def test_liver_like_worked_example_with_cascade():
    p3, p2 = _plan(synthetic_fingerprint(131, (1.0, 0.7676, 0.7676), (432, 512, 512)))
    assert p3.num_stages == 2 and p3.has_cascade
    full, low = p3.configuration("3d_fullres"), p3.configuration("3d_lowres")
    assert p3.stage_for("3d_fullres") == 1 and p3.stage_for("3d_lowres") == 0
    assert p3.configuration("3d_cascade_fullres") == full
    assert full.patch_size == [128, 128, 128] and full.batch_size == 2
    assert full.num_pool_per_axis == [5, 5, 5]
    assert full.current_spacing == pytest.approx([1.0, 0.7676, 0.7676])
    assert low.current_spacing == pytest.approx([2.40, 1.84, 1.84], rel=0.01)
    assert low.median_patient_size_in_voxels == pytest.approx([180, 213, 213], abs=2)
    assert low.original_spacing == pytest.approx([1.0, 0.7676, 0.7676])
    assert low.patch_size == [128, 128, 128] and low.batch_size == 2
    # lowres median image has less than half the voxels of fullres, and at most 4 patches' worth
    assert 2 * np.prod(low.median_patient_size_in_voxels) < np.prod(full.median_patient_size_in_voxels)
    assert np.prod(low.median_patient_size_in_voxels) <= 4 * np.prod(low.patch_size) * 1.01
    two = p2.configuration("2d")
    assert two.patch_size == [512, 512] and two.batch_size == 12
    assert two.num_pool_per_axis == [7, 7]
    assert configurations(p3, p2) == ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]


def _prostate_like():
    # axis 0 coarse; 4 of 30 cases at 3.0 mm so that the 10th percentile (3.0) differs from the median (3.6)
    spacings = [(3.0, 0.62, 0.62)] * 4 + [(3.6, 0.62, 0.62)] * 26
    return synthetic_fingerprint(30, shape=(20, 320, 319), spacings=spacings)


def test_anisotropic_target_spacing_transpose_and_kernels():
    fp = _prostate_like()
    target = ExperimentPlanner3D_v21().get_target_spacing(fp)
    assert np.percentile([s[0] for s in fp.all_spacings], 10) == pytest.approx(3.0)
    assert target.tolist() == pytest.approx([3.0, 0.62, 0.62])
    p3, p2 = _plan(fp)
    assert p3.transpose_forward == [0, 1, 2] and p3.transpose_backward == [0, 1, 2]
    full = p3.configuration("3d_fullres")
    assert full.current_spacing == pytest.approx([3.0, 0.62, 0.62])
    # shapes at target spacing: 3.6/3.0*20 = 24 for the majority
    assert full.median_patient_size_in_voxels == [24, 320, 319]
    # the coarse axis first gets kernel 1 and no pooling until in-plane spacing reaches half of it
    assert full.conv_kernel_sizes[0] == [1, 3, 3]
    assert full.pool_op_kernel_sizes[0] == [1, 2, 2]
    spacing = np.array(full.current_spacing)
    for pool, conv in zip(full.pool_op_kernel_sizes, full.conv_kernel_sizes):
        similar = spacing[1] / spacing[0] < 2 and spacing[0] / spacing[1] < 2
        assert conv[0] == (3 if similar else 1)
        spacing = spacing * np.array(pool)
    assert full.do_dummy_2D_data_aug == (max(full.patch_size) / full.patch_size[0] > 3)
    assert full.do_dummy_2D_data_aug
    assert full.batch_size >= 2
    # 2D keeps the plain median spacing (no anisotropy rule)
    assert p2.configuration("2d").current_spacing == pytest.approx([3.6, 0.62, 0.62])
    assert p2.configuration("2d").do_dummy_2D_data_aug is False


def test_transpose_moves_coarse_axis_first():
    fp = synthetic_fingerprint(10, spacing=(0.7, 0.7, 4.0), shape=(300, 300, 25))
    p3, p2 = _plan(fp)
    for plans in (p3, p2):
        assert plans.transpose_forward == [2, 0, 1]
        assert plans.transpose_backward == [1, 2, 0]
        stage = plans.plans_per_stage[plans.num_stages - 1]
        assert stage.current_spacing == pytest.approx([4.0, 0.7, 0.7])
        assert stage.median_patient_size_in_voxels == [25, 300, 300]
    # original spacings/sizes stay in array order
    assert p3.original_spacings[0] == pytest.approx([0.7, 0.7, 4.0])
    assert p3.original_sizes[0] == [300, 300, 25]


@pytest.mark.parametrize(
    ("spacings", "shape", "expected"),
    [
        # anisotropic spacing AND voxels: 10th percentile (2.0)
        ([(2.0, 1, 1)] * 4 + [(4.0, 1, 1)] * 16, (20, 200, 200), 2.0),
        # anisotropic spacing but not voxels (100*3 > 200): median
        ([(2.0, 1, 1)] * 4 + [(4.0, 1, 1)] * 16, (100, 200, 200), 4.0),
        # anisotropic voxels but spacing ratio 2.9 < 3: median
        ([(1.5, 1, 1)] * 4 + [(2.9, 1, 1)] * 16, (20, 200, 200), 2.9),
        # 10th percentile (0.5) below the other axes' spacing (1.0): clamp to 1.0 + 1e-5
        ([(0.5, 1, 1)] * 4 + [(5.0, 1, 1)] * 16, (20, 200, 200), 1.0 + 1e-5),
    ],
)
def test_anisotropy_rule_conditions(spacings, shape, expected):
    fp = synthetic_fingerprint(len(spacings), shape=shape, spacings=spacings)
    target = ExperimentPlanner3D_v21().get_target_spacing(fp)
    assert target[0] == pytest.approx(expected, abs=1e-9)
    assert target[1:].tolist() == [1.0, 1.0]
    assert ExperimentPlanner2D_v21().get_target_spacing(fp)[0] == pytest.approx(np.median([s[0] for s in spacings]))


def test_min_batch_size_two_in_3d_but_not_in_2d():
    # one small case: the 5 % cap is round(0.05*63000/89600) = 0
    p3, p2 = _plan(synthetic_fingerprint(1, (1.0, 1.0, 1.0), (36, 50, 35)))
    assert p3.configuration("3d_fullres").batch_size == 2
    assert round(0.05 * 36 * 50 * 35 / (56 * 40)) == 1
    assert p2.configuration("2d").batch_size == 1


def test_2d_batch_below_minimum_is_a_clear_error():
    class StrictPlanner2D(ExperimentPlanner2D_v21):
        min_batch_size = 10**6

    with pytest.raises(PlanningError, match="--no-2d"):
        _plan(synthetic_fingerprint(5), planner_3d=None, planner_2d=StrictPlanner2D)


def _fixed_ref_planner(ref: float) -> ExperimentPlanner3D_v21:
    class FixedRef(ExperimentPlanner3D_v21):
        def vram_reference(self) -> float:
            return ref

    return FixedRef()


def _est(patch):
    planner = ExperimentPlanner3D_v21()
    return planner.vram_estimate(planner.topology(np.ones(3), np.array(patch)), 1, 3)


def test_shrink_step_subtracts_the_divisibility_of_the_shrunk_patch():
    # [64,64,64] pools 4x (divisor 16); the shrunk trial [48,64,64] pools 3x on axis 0 (divisor 8): 64 -> 56
    ref = (_est([64, 64, 64]) + _est([56, 64, 64])) / 2
    assert _est([56, 64, 64]) <= ref < _est([64, 64, 64])
    planner = _fixed_ref_planner(ref)
    topo, est = planner.fit_patch(np.ones(3), np.array([64, 64, 64]), np.array([64, 128, 128]), 1, 3)
    assert topo.patch_size == [56, 64, 64]  # axis 0 has the largest patch/median ratio
    assert est == _est([56, 64, 64]) <= ref


def test_shrink_ties_take_the_last_axis():
    ref = (_est([64, 64, 64]) + _est([64, 64, 56])) / 2
    topo, _ = _fixed_ref_planner(ref).fit_patch(np.ones(3), np.array([64, 64, 64]), np.array([64, 64, 64]), 1, 3)
    assert topo.patch_size == [64, 64, 56]


def test_shrink_loop_until_reference_fits():
    planner = ExperimentPlanner3D_v21()
    spacing, patch, median = np.array([1.0, 0.7676, 0.7676]), np.array([432, 512, 512]), np.array([432, 512, 512])
    assert _est(patch) > planner.vram_reference()
    topo, est = planner.fit_patch(spacing, patch, median, 1, 3)
    assert est <= planner.vram_reference()
    assert all(p % d == 0 for p, d in zip(topo.patch_size, topo.must_be_divisible_by))
    assert topo.patch_size == [128, 128, 128]


@pytest.mark.parametrize(("reduction", "flag"), [(0.7, True), (0.75, False), (0.9, False)])
def test_mask_for_norm_median_rule(reduction, flag):
    reductions = [reduction] * 5 + [0.1, 0.1, 1.0, 1.0]  # median stays `reduction`
    fp = synthetic_fingerprint(9, size_reductions=reductions)
    p3, p2 = _plan(fp)
    assert p3.use_mask_for_norm == {0: flag} == p2.use_mask_for_norm


def test_normalization_schemes_and_ct_substring_rule():
    names = ("CT", "ct", "PET-CT", "noNorm", "T2")
    fp = synthetic_fingerprint(4, modalities=names, size_reduction=0.5)
    p3, _ = _plan(fp)
    assert p3.normalization_schemes == {0: "CT", 1: "CT", 2: "nonCT", 3: "noNorm", 4: "nonCT"}
    # substring "CT" is case-sensitive: "ct" keeps the size-reduction rule (0.5 < 0.75 -> True)
    assert p3.use_mask_for_norm == {0: False, 1: True, 2: False, 3: True, 4: True}
    assert set(p3.intensity_properties) == {0, 1}
    assert p3.intensity_properties[0] == fp.intensity_properties[0]


def test_intensity_properties_only_for_ct():
    p3, _ = _plan(synthetic_fingerprint(4, modalities=("MRI", "T2")))
    assert p3.intensity_properties is None
    assert p3.normalization_schemes == {0: "nonCT", 1: "nonCT"}


def test_ct_without_foreground_statistics_is_an_error():
    nan = float("nan")
    stats = IntensityStats(mean=nan, sd=nan, median=nan, mn=nan, mx=nan, percentile_99_5=nan, percentile_00_5=nan)
    with pytest.raises(DatasetError, match="CT normalization"):
        _plan(synthetic_fingerprint(4, modalities=("CT",), stats=stats))


def test_plans_documents_fields_and_round_trip(tmp_path):
    fp = synthetic_fingerprint(20, (1.0, 1.0, 1.0), (36, 50, 35), modalities=("MRI", "T1"), n_classes=3)
    p3, p2 = _plan(fp)
    assert (p3.dimension, p2.dimension) == ("3D", "2D")
    assert p3.preprocessor_name == "GenericPreprocessor" and p2.preprocessor_name == "PreprocessorFor2D"
    assert p3.data_identifier == "nnUNetData_plans_v2.1" and p2.data_identifier == "nnUNetData_plans_v2.1_2D"
    assert p3.plans_identifier == p2.plans_identifier == "nnUNetPlansv2.1"
    assert p3.planner == "ExperimentPlanner3D_v21" and p2.planner == "ExperimentPlanner2D_v21"
    assert p3.num_modalities == 2 and p3.modalities == {0: "MRI", 1: "T1"}
    assert p3.num_classes == 3 and p3.all_classes == [1, 2, 3] and p3.num_classes_with_background == 4
    assert p3.case_ids == fp.case_ids and len(p3.original_spacings) == 20
    assert p3.base_num_features == 32 and p3.conv_per_stage == 2
    from stages.plan.models import Plans

    for plans in (p3, p2):
        path = plans.save(tmp_path / "p.json")
        assert Plans.load(path) == plans


def test_bigger_gpu_variant_scales_reference_and_identifiers():
    base, big = ExperimentPlanner3D_v21(), ExperimentPlanner3D_v21_32GB()
    assert big.vram_reference() == pytest.approx(base.vram_reference() * 32 / 8)
    fp = synthetic_fingerprint(131, (1.0, 0.7676, 0.7676), (432, 512, 512))
    p_base, _ = _plan(fp, planner_2d=None)
    p_big, _ = _plan(fp, planner_3d="ExperimentPlanner3D_v21_32GB", planner_2d=None)
    a, b = p_base.configuration("3d_fullres"), p_big.configuration("3d_fullres")
    assert np.prod(b.patch_size) * b.batch_size > np.prod(a.patch_size) * a.batch_size
    assert p_big.plans_identifier == "nnUNetPlansv2.1_32GB"
    assert p_big.data_identifier == "nnUNetData_plans_v2.1_32GB"


def test_nothing_to_plan_and_wrong_dimension():
    fp = synthetic_fingerprint(3)
    with pytest.raises(BadInputError):
        plan_experiment(fp, None, None)
    with pytest.raises(BadInputError, match="3D"):
        plan_experiment(fp, "ExperimentPlanner2D_v21", None)
