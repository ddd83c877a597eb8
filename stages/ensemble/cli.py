"""``python -m stages ensemble``: average the saved probabilities of several predictions (spec §11.3)."""

from __future__ import annotations

import time
from contextlib import ExitStack

import typer

from stages.postprocess.staging import local_file, local_folder, output_folder, resolve_workers, write_result_json

app = typer.Typer(add_completion=False, help=__doc__)


def _probability_files(name: str) -> bool:
    """Files a prediction folder contributes to an ensemble: ``<case>.npz`` and ``<case>.json``."""
    return "/" not in name and name.endswith((".npz", ".json"))


@app.command()
def ensemble(
    folders: list[str] = typer.Option(..., "--folder", help="A prediction folder (path or s3:// prefix) made with "
                                      "--save_npz; repeat for each model to ensemble."),
    output: str = typer.Option(..., "--output", help="Output folder (path or s3:// prefix)."),
    postprocessing: str = typer.Option(None, "--postprocessing", help="postprocessing.json to apply; the raw "
                                       "ensemble then goes to <output>/not_postprocessed/."),
    npz: bool = typer.Option(False, "--npz", help="Also store the averaged probabilities (<case>.npz)."),
    num_processes: int = typer.Option(0, "--num-processes", help="Worker processes (0: the CPUs available, at "
                                      "most 8, or nnUNet_def_n_proc when set)."),
    result_json: str = typer.Option(None, "--result-json", help="Write a small JSON result (output URI, case "
                                    "ids) to this path or URI."),
) -> None:
    """Mean of the probability maps of the same case over all folders, argmax, written with its geometry."""
    from stages.ensemble.merge import ensemble_folders
    from stages.log import bind_context

    bind_context(stage="ensemble")
    start = time.monotonic()
    workers = resolve_workers(num_processes)
    with ExitStack() as stack:
        local_dirs = [stack.enter_context(local_folder(f, _probability_files)) for f in folders]
        rules = stack.enter_context(local_file(postprocessing)) if postprocessing else None
        out = stack.enter_context(output_folder(output))
        cases = ensemble_folders(local_dirs, out, rules, save_npz=npz, num_processes=workers)
    write_result_json(result_json, {
        "schema_version": 1, "step": "ensemble", "output": output, "num_cases": len(cases), "case_ids": cases,
        "postprocessed": bool(postprocessing), "seconds": round(time.monotonic() - start, 2),
    })
    typer.echo(f"ensembled {len(cases)} case(s) from {len(folders)} folder(s) into {output}")
