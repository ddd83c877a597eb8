"""``python -m stages verify``: check a raw dataset (local folder or S3 prefix) and print every problem."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from stages.errors import DatasetError

app = typer.Typer(add_completion=False, help="Verify a raw dataset's integrity; report every problem.")


@app.command()
def verify(
    dataset: str = typer.Option(
        ..., "--dataset", help="Task folder or s3:// prefix holding dataset.json, imagesTr, labelsTr (imagesTs)."
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Local path where the full report is written as JSON (also when problems are found)."
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Files read in parallel (default: available CPUs, at most 8)."
    ),
) -> None:
    """Verify the dataset; exit 0 when it is clean, 2 after printing every problem otherwise."""
    from stages.dataset.staging import verify_uri
    from stages.dataset.verify import format_report

    result = verify_uri(dataset, workers=workers)
    if report is not None:
        result.save(report)
    sys.stdout.write(format_report(result) + "\n")
    sys.stdout.flush()
    if not result.ok:
        raise DatasetError(
            f"dataset {dataset} failed verification: {len(result.problems)} problems in "
            f"{len(result.cases_with_problems)} cases (listed above)"
        )
