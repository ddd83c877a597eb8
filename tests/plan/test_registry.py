"""Planner selection by name, including user subclasses."""

from __future__ import annotations

import pytest

from stages.errors import BadInputError
from stages.plan.experiment import plan_experiment
from stages.plan.planner2d import ExperimentPlanner2D_v21
from stages.plan.planner3d import ExperimentPlanner3D_v21, ExperimentPlanner3D_v21_11GB, ExperimentPlanner3D_v21_16GB
from stages.plan.registry import available_planners, get_planner
from tests.plan.fingerprints import synthetic_fingerprint


def test_builtin_planners_by_name():
    assert get_planner("ExperimentPlanner3D_v21") is ExperimentPlanner3D_v21
    assert get_planner("ExperimentPlanner2D_v21", "2D") is ExperimentPlanner2D_v21
    assert get_planner("ExperimentPlanner3D_v21_11GB") is ExperimentPlanner3D_v21_11GB
    names3d = available_planners("3D")
    assert {"ExperimentPlanner3D_v21", "ExperimentPlanner3D_v21_16GB", "ExperimentPlanner3D_v21_32GB"} <= set(names3d)
    assert "ExperimentPlanner2D_v21" not in names3d
    assert not any(n.startswith("_") for n in available_planners())
    assert ExperimentPlanner3D_v21_16GB().vram_reference() == pytest.approx(
        2 * ExperimentPlanner3D_v21().vram_reference())


def test_user_subclass_is_found_by_name():
    class RegistryTestPlanner3DHalfPatch(ExperimentPlanner3D_v21):
        initial_patch_edge = 32

    assert get_planner("RegistryTestPlanner3DHalfPatch", "3D") is RegistryTestPlanner3DHalfPatch
    p3, _ = plan_experiment(synthetic_fingerprint(10, shape=(64, 64, 64)), "RegistryTestPlanner3DHalfPatch", None)
    assert p3.planner == "RegistryTestPlanner3DHalfPatch"
    assert p3.configuration("3d_fullres").patch_size == [32, 32, 32]


@pytest.mark.parametrize("path", ["tests.plan.user_planners:UserPlannerByPath3D",
                                  "tests.plan.user_planners.UserPlannerByPath3D"])
def test_user_subclass_by_import_path(path):
    cls = get_planner(path, "3D")
    assert cls.__name__ == "UserPlannerByPath3D"
    p3, _ = plan_experiment(synthetic_fingerprint(10, shape=(100, 100, 100)), path, None)
    assert p3.configuration("3d_fullres").patch_size == [64, 64, 64]
    assert p3.plans_identifier == "nnUNetPlans_userpath"


@pytest.mark.parametrize(
    ("name", "dimension", "message"),
    [
        ("NoSuchPlanner", None, "unknown planner"),
        ("ExperimentPlanner3D_v21", "2D", "plans 3D"),
        ("tests.plan.no_such_module:X", None, "cannot import"),
        ("tests.plan.user_planners:Missing", None, "no attribute"),
        ("stages.plan.models:Plans", None, "not an ExperimentPlanner"),
    ],
)
def test_bad_planner_names(name, dimension, message):
    with pytest.raises(BadInputError, match=message):
        get_planner(name, dimension)
