"""``python -m stages plan``: plan the 2d / 3d_fullres / 3d_lowres configurations from a fingerprint."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import typer

from stages.stagekit.options import raw_prefix_option, result_json_option

app = typer.Typer(add_completion=False, help="Plan 2d / 3d_fullres / 3d_lowres configurations from a fingerprint.")


@app.command()
def plan(
    fingerprint: str = typer.Option(..., "--fingerprint", help="fingerprint.json: a local path or an s3:// URI."),
    output: str = typer.Option(
        ..., "--output",
        help="Folder or s3:// prefix receiving nnUNetPlansv2.1_plans_3D.json and nnUNetPlansv2.1_plans_2D.json.",
    ),
    planner3d: str = typer.Option(
        "ExperimentPlanner3D_v21", "--planner3d",
        help="3D planner: a class name (e.g. ExperimentPlanner3D_v21_32GB) or module:Class of a user subclass.",
    ),
    planner2d: str = typer.Option(
        "ExperimentPlanner2D_v21", "--planner2d", help="2D planner: a class name or module:Class."
    ),
    no_2d: bool = typer.Option(False, "--no-2d", help="Do not plan the 2d configuration."),
    no_3d: bool = typer.Option(False, "--no-3d", help="Do not plan the 3D configurations."),
    result_json: str | None = result_json_option(),
    raw_prefix: str | None = raw_prefix_option(),
) -> None:
    """Read the fingerprint, plan, and write the plans documents."""
    from stages import storage
    from stages.errors import BadInputError
    from stages.fingerprint.models import Fingerprint
    from stages.log import bind_context
    from stages.plan.experiment import configurations, plan_experiment, plans_uri, write_plans
    from stages.stagekit import WriteGuard, marker_uri, protected_prefixes, run_stage

    if no_2d and no_3d:
        raise BadInputError("--no-2d and --no-3d together leave nothing to plan")
    bind_context(stage="plan")
    chosen3d, chosen2d = None if no_3d else planner3d, None if no_2d else planner2d

    def compute(out_dir: Path) -> dict:
        fp = Fingerprint.from_json(storage.read_bytes(fingerprint), source=fingerprint)
        plans_3d, plans_2d = plan_experiment(fp, chosen3d, chosen2d)
        written = {}
        for key, plans in (("plans_3d", plans_3d), ("plans_2d", plans_2d)):
            if plans is not None:
                write_plans(plans, str(out_dir))
                written[key] = plans_uri(plans, output)
        configs = configurations(plans_3d, plans_2d)
        return {**written, "configurations": configs, "has_cascade": bool(plans_3d and plans_3d.has_cascade)}

    # one marker per planner choice, so that plans of several planners can share the output folder
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", f"plan.{chosen3d or 'no3d'}.{chosen2d or 'no2d'}")
    result = run_stage(
        "plan", {"planner3d": chosen3d, "planner2d": chosen2d}, [fingerprint], output, compute, result_json,
        marker=marker_uri(output, tag), guard=WriteGuard(protected_prefixes(raw_prefix)),
    )
    summary = result.extra
    written = [summary[k] for k in ("plans_3d", "plans_2d") if k in summary]
    sys.stdout.write(f"configurations: {', '.join(summary['configurations'])} ({result.status})\n"
                     + "".join(f"wrote {u}\n" for u in written))
