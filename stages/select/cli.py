"""``python -m stages select``: find the best configuration or pair ensemble of a task (spec §11.1).

Reads ``<results>/nnUNet/<config>/<task>/<trainer>__<plans>/`` of every candidate, writes their consolidated
cross-validation and postprocessing, the pair ensembles under ``<results>/nnUNet/ensembles/<task>/`` and the
decision ``selection.json`` there. ``--results`` may be an ``s3://`` prefix: only the validation outputs and
references are downloaded, everything is recomputed, and the outputs are uploaded.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import typer

from stages import storage
from stages.postprocess.staging import download_matching, parse_folds, resolve_workers, write_result_json

app = typer.Typer(add_completion=False, help=__doc__)

_TRAINER_OUTPUTS = ("cv_niftis_raw", "cv_niftis_postprocessed")


def _selection_inputs(name: str) -> bool:
    """Files of a trainer folder that selection reads: validation outputs (with probabilities) and references."""
    head, _, rest = name.partition("/")
    if head == "gt_niftis":
        return "/" not in rest
    sub, _, leaf = rest.partition("/")
    return head.startswith("fold_") and sub == "validation_raw" and "/" not in leaf


def _split(text: str) -> list[str]:
    return [v for v in text.replace(" ", ",").split(",") if v]


@app.command()
def select(
    results: str = typer.Option(..., "--results", help="RESULTS_FOLDER: local path or s3:// prefix holding "
                                "nnUNet/<config>/<task>/<trainer>__<plans>/."),
    task: str = typer.Option(..., "--task", help="Task name, e.g. Task004_Hippocampus (an id such as 4 works for "
                             "a local --results)."),
    configurations: str = typer.Option("2d,3d_lowres,3d_fullres,3d_cascade_fullres", "--configurations",
                                       help="Candidate configurations, comma separated."),
    trainer: str = typer.Option("nnUNetTrainerV2", "--trainer", help="Trainer of the non-cascade configurations."),
    cascade_trainer: str = typer.Option("nnUNetTrainerV2CascadeFullRes", "--cascade-trainer",
                                        help="Trainer of 3d_cascade_fullres."),
    plans: str = typer.Option("nnUNetPlansv2.1", "--plans", help="Plans identifier of the models."),
    folds: str = typer.Option("0,1,2,3,4", "--folds", help="Cross-validation folds, comma separated."),
    strict: bool = typer.Option(False, "--strict", help="Fail when a listed configuration has no trained model "
                                "(default: skip it with a warning)."),
    disable_ensembling: bool = typer.Option(False, "--disable-ensembling", help="Only compare single "
                                            "configurations (no validation probabilities needed)."),
    force: bool = typer.Option(False, "--force", help="Recompute consolidations and ensembles even when up to "
                               "date (always the case for an s3:// --results)."),
    num_processes: int = typer.Option(0, "--num-processes", help="Worker processes (0: the CPUs available, at "
                                      "most 8, or nnUNet_def_n_proc when set)."),
    result_json: str = typer.Option(None, "--result-json", help="Write a small JSON result (selection URI, best "
                                    "model, score, postprocessing URI) to this path or URI."),
) -> None:
    """Consolidate every candidate, ensemble every pair, and print and store the best choice."""
    from stages.log import bind_context
    from stages.paths import resolve_task, trainer_dir
    from stages.select.find_best import CASCADE, find_best_configuration
    from stages.select.models import ENSEMBLES, SELECTION_JSON
    from stages.select.report import format_report

    start = time.monotonic()
    configs = _split(configurations)
    fold_list = parse_folds(folds)
    workers = resolve_workers(num_processes)
    remote = storage.is_s3(results)
    if not remote:
        root = Path(storage.to_local_path(results))
        task = resolve_task(task, *(root / "nnUNet" / c for c in configs))
    else:
        task = resolve_task(task)
    bind_context(stage="select", dataset=task)
    kwargs = dict(configurations=configs, trainer=trainer, cascade_trainer=cascade_trainer, plans=plans,
                  folds=fold_list, strict=strict, allow_ensembling=not disable_ensembling,
                  num_processes=workers, results_uri=results)
    if not remote:
        selection = find_best_configuration(root, task, force=force, **kwargs)
    else:
        with tempfile.TemporaryDirectory(prefix="nnkube-select-") as scratch:
            local = Path(scratch)
            rel_dirs = [trainer_dir(Path(""), c, task, cascade_trainer if c == CASCADE else trainer, plans)
                        for c in dict.fromkeys(configs)]
            for rel in rel_dirs:
                download_matching(storage.join(results, rel.as_posix()), local / rel, _selection_inputs)
            selection = find_best_configuration(local, task, force=True, **kwargs)
            for rel in rel_dirs:
                if (local / rel / "postprocessing.json").is_file():
                    for sub in _TRAINER_OUTPUTS:
                        storage.upload_tree(local / rel / sub, storage.join(results, rel.as_posix(), sub))
                    storage.upload_file(local / rel / "postprocessing.json",
                                        storage.join(results, rel.as_posix(), "postprocessing.json"))
            ens = Path("nnUNet") / ENSEMBLES / task
            storage.upload_tree(local / ens, storage.join(results, ens.as_posix()))
    selection_uri = storage.join(results, "nnUNet", ENSEMBLES, task, SELECTION_JSON)
    write_result_json(result_json, {
        "schema_version": 1, "step": "select", "task": task, "selection": selection_uri, "best": selection.best,
        "score": selection.score, "configurations": [m.configuration for m in selection.models],
        "is_ensemble": selection.is_ensemble,
        "postprocessing_json": selection.resolve(selection.postprocessing_json),
        "seconds": round(time.monotonic() - start, 2),
    })
    typer.echo(format_report(selection), nl=False)
