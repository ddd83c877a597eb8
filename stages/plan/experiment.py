"""Plan both dimensionalities of an experiment from a fingerprint (spec §3)."""

from __future__ import annotations

import logging

from stages.errors import BadInputError
from stages.fingerprint.models import Fingerprint
from stages.plan.base import ExperimentPlanner
from stages.plan.models import Plans, plans_filename
from stages.plan.registry import DEFAULT_PLANNER_2D, DEFAULT_PLANNER_3D, get_planner

log = logging.getLogger(__name__)

PlannerLike = str | type[ExperimentPlanner] | ExperimentPlanner | None


def resolve_planner(planner: PlannerLike, dimension: str) -> ExperimentPlanner | None:
    """A planner instance from a name, a class or an instance (None stays None).

    Raises:
        BadInputError: Unknown name, not a planner, or a planner of the other dimensionality.
    """
    if planner is None:
        return None
    if isinstance(planner, str):
        planner = get_planner(planner, dimension)
    if isinstance(planner, type):
        if not issubclass(planner, ExperimentPlanner):
            raise BadInputError(f"{planner!r} is not an ExperimentPlanner")
        planner = planner()
    if not isinstance(planner, ExperimentPlanner):
        raise BadInputError(f"{planner!r} is not an ExperimentPlanner")
    if planner.dimension != dimension:
        raise BadInputError(f"{planner.name()} plans {planner.dimension} data, but a {dimension} planner is needed")
    return planner


def plan_experiment(
    fingerprint: Fingerprint,
    planner_3d: PlannerLike = DEFAULT_PLANNER_3D,
    planner_2d: PlannerLike = DEFAULT_PLANNER_2D,
) -> tuple[Plans | None, Plans | None]:
    """Plan the 3D and 2D configurations.

    Args:
        fingerprint: The dataset fingerprint.
        planner_3d: 3D planner (name, class or instance), or None to skip 3D.
        planner_2d: 2D planner (name, class or instance), or None to skip 2D.

    Returns:
        ``(plans_3d, plans_2d)``; an entry is None where that planner was None.
    """
    p3 = resolve_planner(planner_3d, "3D")
    p2 = resolve_planner(planner_2d, "2D")
    if p3 is None and p2 is None:
        raise BadInputError("nothing to plan: both the 3D and the 2D planner are disabled")
    plans_3d = p3.plan(fingerprint) if p3 is not None else None
    plans_2d = p2.plan(fingerprint) if p2 is not None else None
    return plans_3d, plans_2d


def configurations(plans_3d: Plans | None, plans_2d: Plans | None) -> list[str]:
    """Names of the configurations the plans provide (``2d``, ``3d_fullres``, ``3d_lowres``, ...)."""
    out = []
    if plans_2d is not None:
        out.append("2d")
    if plans_3d is not None:
        out.append("3d_fullres")
        if plans_3d.has_cascade:
            out += ["3d_lowres", "3d_cascade_fullres"]
    return out


def plans_uri(plans: Plans, prefix: str) -> str:
    """Where ``plans`` are stored under ``prefix`` (``<prefix>/nnUNetPlansv2.1_plans_3D.json`` ...)."""
    from stages import storage

    return storage.join(prefix, plans_filename(plans.dimension, plans.plans_identifier))


def write_plans(plans: Plans, prefix: str) -> str:
    """Write ``plans`` atomically under the folder or S3 prefix ``prefix``; returns the URI written."""
    from stages import storage

    uri = plans_uri(plans, prefix)
    storage.write_text(uri, plans.to_json())
    log.info("wrote %s", uri)
    return uri


def read_plans(uri: str) -> Plans:
    """Read a plans document from a local path or S3 URI."""
    from stages import storage

    return Plans.from_json(storage.read_bytes(uri), source=uri)
