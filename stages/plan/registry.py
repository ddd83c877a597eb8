"""Find planner classes by name: the built-in ones and any subclass a user defines.

A planner is selected by its class name (``ExperimentPlanner3D_v21``, ``ExperimentPlanner3D_v21_32GB``, or the
name of any subclass of :class:`~stages.plan.base.ExperimentPlanner` that has been imported), or by an import
path ``package.module:ClassName`` / ``package.module.ClassName``, which imports the user's module first.
"""

from __future__ import annotations

import importlib

from stages.errors import BadInputError
from stages.plan import planner2d, planner3d  # noqa: F401  (import registers the built-in planners)
from stages.plan.base import ExperimentPlanner

DEFAULT_PLANNER_3D = "ExperimentPlanner3D_v21"
DEFAULT_PLANNER_2D = "ExperimentPlanner2D_v21"


def _all_subclasses(cls: type) -> list[type]:
    out, todo = [], list(cls.__subclasses__())
    while todo:
        sub = todo.pop()
        if sub not in out:
            out.append(sub)
            todo.extend(sub.__subclasses__())
    return out


def available_planners(dimension: str | None = None) -> dict[str, type[ExperimentPlanner]]:
    """Concrete planner classes by name (classes whose name starts with ``_`` are bases, not planners).

    Args:
        dimension: ``"2D"`` or ``"3D"`` to keep only one kind; None for all.
    """
    found: dict[str, type[ExperimentPlanner]] = {}
    for cls in _all_subclasses(ExperimentPlanner):
        if cls.__name__.startswith("_") or not hasattr(cls, "dimension"):
            continue
        if dimension is not None and cls.dimension != dimension:
            continue
        found.setdefault(cls.__name__, cls)
    return dict(sorted(found.items()))


def _import_path(name: str) -> type:
    module_name, sep, attr = name.rpartition(":")
    if not sep:
        module_name, _, attr = name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInputError(f"planner {name!r}: cannot import module {module_name!r} ({exc})") from exc
    obj = getattr(module, attr, None)
    if obj is None:
        raise BadInputError(f"planner {name!r}: module {module_name!r} has no attribute {attr!r}")
    return obj


def get_planner(name: str, dimension: str | None = None) -> type[ExperimentPlanner]:
    """The planner class called ``name``.

    Args:
        name: Class name of an imported planner, or an import path ``module:Class`` / ``module.Class``.
        dimension: If given (``"2D"``/``"3D"``), the planner must plan that dimensionality.

    Raises:
        BadInputError: Unknown, ambiguous, not a planner, or of the wrong dimensionality.
    """
    if ":" in name or "." in name:
        cls = _import_path(name)
        if not (isinstance(cls, type) and issubclass(cls, ExperimentPlanner) and hasattr(cls, "dimension")):
            raise BadInputError(f"planner {name!r} is not an ExperimentPlanner subclass")
    else:
        matches = [c for c in _all_subclasses(ExperimentPlanner) if c.__name__ == name and hasattr(c, "dimension")]
        if not matches:
            known = ", ".join(available_planners(dimension)) or "none"
            raise BadInputError(f"unknown planner {name!r}; available: {known} (or give module:Class)")
        if len({f"{c.__module__}.{c.__qualname__}" for c in matches}) > 1:
            where = ", ".join(sorted(f"{c.__module__}:{c.__qualname__}" for c in matches))
            raise BadInputError(f"planner name {name!r} is ambiguous ({where}); give module:Class")
        cls = matches[0]
    if dimension is not None and cls.dimension != dimension:
        raise BadInputError(f"planner {name!r} plans {cls.dimension} data, but a {dimension} planner is needed")
    return cls
