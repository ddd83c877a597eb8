"""``python -m stages evaluate``: evaluate a folder of predictions against references (nnU-Net summary.json)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import typer

from stages import storage
from stages.postprocess.staging import (
    format_score,
    images_only,
    local_folder,
    parse_int_list,
    resolve_workers,
    write_result_json,
)

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def evaluate(
    reference: str = typer.Option(..., "--reference", help="Folder or s3:// prefix of reference label images "
                                  "(<case>.nii.gz)."),
    predictions: str = typer.Option(..., "--predictions", help="Folder or s3:// prefix of predicted label images "
                                    "with the same file names."),
    labels: str = typer.Option(..., "--labels", help="Label values to evaluate, comma separated, e.g. 0,1,2 "
                               "(nnU-Net includes background 0)."),
    output: str = typer.Option(None, "--output", help="Where summary.json is written (path or URI; default "
                               "<predictions>/summary.json)."),
    num_processes: int = typer.Option(0, "--num-processes", help="Cases evaluated in parallel (0: the CPUs "
                                      "available, at most 8, or nnUNet_def_n_proc when set)."),
    result_json: str = typer.Option(None, "--result-json", help="Write a small JSON result (summary URI, case "
                                    "count, foreground mean Dice) to this path or URI."),
) -> None:
    """Compute Dice and the other nnU-Net metrics per case and label, and their means (spec §6.8)."""
    from stages.evaluate.evaluator import evaluate_folder
    from stages.log import bind_context
    from stages.postprocess.determine import foreground_score

    bind_context(stage="evaluate")
    start = time.monotonic()
    label_values = parse_int_list(labels, "--labels")
    target = output or storage.join(predictions, "summary.json")
    workers = resolve_workers(num_processes)
    with (local_folder(reference, images_only) as ref, local_folder(predictions, images_only) as pred,
          tempfile.TemporaryDirectory(prefix="nnkube-eval-") as scratch):
        local_out = Path(scratch) / "summary.json" if storage.is_s3(target) else storage.to_local_path(target)
        summary = evaluate_folder(ref, pred, label_values, output_file=local_out, num_processes=workers)
        if storage.is_s3(target):
            storage.upload_file(local_out, target)
    dice = foreground_score(summary)
    count = len(summary["results"]["all"])
    write_result_json(result_json, {
        "schema_version": 1, "step": "evaluate", "summary": target, "num_cases": count,
        "foreground_mean_dice": dice, "seconds": round(time.monotonic() - start, 2),
    })
    typer.echo(f"{count} case(s) evaluated, foreground mean Dice {format_score(dice)}: {target}")
