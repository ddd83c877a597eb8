"""A user-defined planner module, imported by path in the registry tests."""

from __future__ import annotations

from stages.plan.planner3d import ExperimentPlanner3D_v21


class UserPlannerByPath3D(ExperimentPlanner3D_v21):
    """Plans at most 64-voxel patch edges (for tests)."""

    initial_patch_edge = 64
    plans_identifier = "nnUNetPlans_userpath"
