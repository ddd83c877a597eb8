"""``python -m stages verify``: check a raw dataset (local folder or S3 prefix) and print every problem.

Verification writes nothing but its optional report (``--report``) and the stage result. With a report, a clean
verification is idempotent: the report is the stage's output and its completion marker
(``_NNKUBE_COMPLETE.verify.<report name>.json`` next to it) records the identities of every file of the dataset,
so a rerun on an unchanged dataset skips the re-reading; any changed, added or removed file verifies again.
Without a report there is nowhere to record a verdict, and every run reads every file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from stages.errors import DatasetError
from stages.stagekit.options import raw_prefix_option, result_json_option

app = typer.Typer(add_completion=False, help="Verify a raw dataset's integrity; report every problem.")


@app.command()
def verify(
    dataset: str = typer.Option(
        ..., "--dataset", help="Task folder or s3:// prefix holding dataset.json, imagesTr, labelsTr (imagesTs)."
    ),
    report: str | None = typer.Option(
        None, "--report",
        help="Local path or URI where the full report is written as JSON (also when problems are found).",
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Files read in parallel (default: available CPUs, at most 8)."
    ),
    result_json: str | None = result_json_option(),
    raw_prefix: str | None = raw_prefix_option(),
) -> None:
    """Verify the dataset; exit 0 when it is clean, 2 after printing every problem otherwise."""
    from stages import storage
    from stages.dataset.staging import verify_uri
    from stages.dataset.verify import format_report
    from stages.log import bind_context
    from stages.stagekit import WriteGuard, marker_uri, protected_prefixes, run_stage

    bind_context(stage="verify", dataset=storage.basename(dataset))
    guard = WriteGuard(protected_prefixes(raw_prefix, [dataset]))
    if report is not None:
        guard.check(report)

    def compute(out_dir: Path) -> dict:
        result = verify_uri(dataset, workers=workers)
        sys.stdout.write(format_report(result) + "\n")
        sys.stdout.flush()
        if not result.ok:
            if report is not None:  # the report of a failed check is written too, but vouched for by no marker
                storage.write_text(report, result.to_json())
            raise DatasetError(
                f"dataset {dataset} failed verification: {len(result.problems)} problems in "
                f"{len(result.cases_with_problems)} cases (listed above)"
            )
        if report is not None:
            (out_dir / storage.basename(report)).write_text(result.to_json())
        return {"dataset": dataset, "ok": True, "num_files_checked": result.num_files_checked, "report": report}

    if report is None:  # no outputs: nothing to skip, and the digest covers the parameters only
        run_stage("verify", {"dataset": dataset}, [], None, compute, result_json, guard=guard)
        return
    folder = storage.parent(report)
    name = storage.basename(report)
    result = run_stage(
        "verify", {"dataset": dataset, "report": name}, [dataset.rstrip("/") + "/"], folder, compute, result_json,
        marker=marker_uri(folder, f"verify.{name.removesuffix('.json')}"), guard=guard,
    )
    if result.status == "skipped":
        sys.stdout.write(f"verify {dataset}: unchanged since the clean verification in {report} (skipped)\n")
