"""``nnkube dataset``: verify and convert raw datasets, on a local folder or an ``s3://`` prefix alike.

The runtime (SimpleITK, numpy) is imported inside the commands, so ``nnkube --help`` works without it.
"""

from __future__ import annotations

from pathlib import Path

import typer

dataset_app = typer.Typer(help="Raw dataset tools: verify integrity, convert MSD tasks.", no_args_is_help=True)


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=getattr(exc, "exit_code", 1))


@dataset_app.command("verify")
def verify(
    dataset: str = typer.Argument(..., help="Task folder or s3:// prefix (dataset.json, imagesTr, labelsTr)."),
    report: Path | None = typer.Option(None, "--report", help="Also write the full report as JSON to this path."),
    workers: int | None = typer.Option(
        None, "--workers", help="Files read in parallel (default: available CPUs, at most 8)."
    ),
) -> None:
    """Check a dataset and list every problem (case, file, problem); exit code 2 if there is any."""
    from stages.dataset.staging import verify_uri
    from stages.dataset.verify import format_report
    from stages.errors import NnkubeError

    try:
        result = verify_uri(dataset, workers=workers)
    except NnkubeError as exc:
        raise _fail(exc) from exc
    if report is not None:
        result.save(report)
    typer.echo(format_report(result))
    if not result.ok:
        raise typer.Exit(code=2)


@dataset_app.command("convert")
def convert(
    msd_task: str = typer.Argument(..., help="MSD task folder or s3:// prefix named TaskXX_Name."),
    output: str = typer.Argument(..., help="Folder or s3:// prefix that receives TaskXXX_NAME/."),
    task_id: int | None = typer.Option(None, "--task-id", help="Id of the converted task (default: the MSD id)."),
    workers: int | None = typer.Option(
        None, "--workers", help="Files converted in parallel (default: available CPUs, at most 8)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing target whose content differs."),
) -> None:
    """Convert an MSD task (4D images split per modality) into the nnU-Net v1 layout; prints the task folder."""
    from stages.dataset.staging import convert_uri
    from stages.errors import NnkubeError

    try:
        result = convert_uri(msd_task, output, task_id=task_id, workers=workers, overwrite=overwrite, progress=True)
    except NnkubeError as exc:
        raise _fail(exc) from exc
    typer.echo(result.output)
