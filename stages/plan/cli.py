"""``python -m stages plan``: plan the 2d / 3d_fullres / 3d_lowres configurations from a fingerprint."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

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
    result_json: Path | None = typer.Option(
        None, "--result-json",
        help="Local path receiving a JSON summary (plans URIs, configurations, whether a cascade exists).",
    ),
) -> None:
    """Read the fingerprint, plan, and write the plans documents."""
    from stages import storage
    from stages.documents import write_json_atomic
    from stages.errors import BadInputError
    from stages.fingerprint.models import Fingerprint
    from stages.log import bind_context
    from stages.plan.experiment import configurations, plan_experiment, write_plans

    if no_2d and no_3d:
        raise BadInputError("--no-2d and --no-3d together leave nothing to plan")
    bind_context(stage="plan")
    fp = Fingerprint.from_json(storage.read_bytes(fingerprint), source=fingerprint)
    plans_3d, plans_2d = plan_experiment(fp, None if no_3d else planner3d, None if no_2d else planner2d)
    written = {}
    for key, plans in (("plans_3d", plans_3d), ("plans_2d", plans_2d)):
        if plans is not None:
            written[key] = write_plans(plans, output)
    configs = configurations(plans_3d, plans_2d)
    summary = {**written, "configurations": configs, "has_cascade": bool(plans_3d and plans_3d.has_cascade)}
    if result_json is not None:
        write_json_atomic(result_json, summary)
    sys.stdout.write(f"configurations: {', '.join(configs)}\n" + "".join(f"wrote {u}\n" for u in written.values()))
