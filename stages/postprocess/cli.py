"""``python -m stages postprocess determine|apply``: connected-component postprocessing on URIs (spec §10).

``determine --trainer-dir URI`` consolidates a model's cross-validation folds and decides its postprocessing
(``cv_niftis_raw/``, ``cv_niftis_postprocessed/``, ``postprocessing.json`` written into the trainer folder);
``determine --raw URI --reference URI`` decides it for any folder of predictions. ``apply`` applies a
``postprocessing.json`` to a folder of predictions.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import typer

from stages import storage
from stages.errors import BadInputError
from stages.postprocess.staging import (
    images_only,
    local_file,
    local_folder,
    output_folder,
    parse_folds,
    parse_int_list,
    resolve_workers,
    write_result_json,
)

app = typer.Typer(add_completion=False, help=__doc__)

_OUTPUTS = ("cv_niftis_raw", "cv_niftis_postprocessed")


def _trainer_inputs(name: str) -> bool:
    """Files of a trainer folder that consolidation reads: validation predictions and the references."""
    head, _, rest = name.partition("/")
    if head == "gt_niftis":
        return images_only(rest)
    sub, _, leaf = rest.partition("/")
    return head.startswith("fold_") and sub == "validation_raw" and (images_only(leaf) or leaf == "summary.json")


def _consolidate(trainer_dir: str, reference: str | None, folds: str, labels: list[int] | None,
                 workers: int):
    from stages.postprocess.consolidate import consolidate_folds
    from stages.postprocess.models import POSTPROCESSING_JSON

    with local_folder(trainer_dir, _trainer_inputs) as local:
        if reference is None:
            rules = consolidate_folds(local, None, parse_folds(folds), labels, workers)
        else:
            with local_folder(reference, images_only) as gt:
                rules = consolidate_folds(local, gt, parse_folds(folds), labels, workers)
        if storage.is_s3(trainer_dir):
            for sub in _OUTPUTS:
                storage.upload_tree(local / sub, storage.join(trainer_dir, sub))
            storage.upload_file(local / POSTPROCESSING_JSON, storage.join(trainer_dir, POSTPROCESSING_JSON))
    return rules, storage.join(trainer_dir, POSTPROCESSING_JSON)


def _determine_folder(raw: str, reference: str, output: str, rules_uri: str, labels: list[int], workers: int):
    from stages.postprocess.determine import determine_postprocessing

    with (local_folder(raw, images_only) as raw_local, local_folder(reference, images_only) as gt,
          output_folder(output) as out, tempfile.TemporaryDirectory(prefix="nnkube-pp-") as scratch):
        json_local = Path(scratch) / "postprocessing.json" if storage.is_s3(rules_uri) else \
            Path(storage.to_local_path(rules_uri))
        rules = determine_postprocessing(raw_local, gt, labels, out, json_path=json_local, num_processes=workers)
        if storage.is_s3(rules_uri):
            storage.upload_file(json_local, rules_uri)
    return rules


@app.command()
def determine(
    trainer_dir: str = typer.Option(None, "--trainer-dir", help="A trained model's folder (path or s3:// URI, "
                                    ".../<config>/<task>/<trainer>__<plans>): consolidate its folds' "
                                    "validation_raw/ and decide postprocessing on the whole cross-validation."),
    folds: str = typer.Option("0,1,2,3,4", "--folds", help="With --trainer-dir: folds to consolidate, comma "
                              "separated."),
    raw: str = typer.Option(None, "--raw", help="Instead of --trainer-dir: a folder of raw predicted label images "
                            "to decide postprocessing for."),
    reference: str = typer.Option(None, "--reference", help="Reference label images (required with --raw; with "
                                  "--trainer-dir the default is its gt_niftis/)."),
    output: str = typer.Option(None, "--output", help="With --raw: where the postprocessed predictions go "
                               "(default: <raw>_postprocessed beside it)."),
    rules: str = typer.Option(None, "--rules", help="With --raw: where postprocessing.json goes (default: beside "
                              "the --raw folder)."),
    labels: str = typer.Option(None, "--labels", help="Label values, comma separated, e.g. 0,1,2 (required with "
                               "--raw; with --trainer-dir read from the folds' summary.json by default)."),
    num_processes: int = typer.Option(0, "--num-processes", help="Worker processes (0: the CPUs available, at "
                                      "most 8, or nnUNet_def_n_proc when set)."),
    result_json: str = typer.Option(None, "--result-json", help="Write a small JSON result (rules URI, chosen "
                                    "removals, Dice values) to this path or URI."),
) -> None:
    """Decide which largest-connected-component removals improve the mean Dice (spec §10)."""
    from stages.log import bind_context

    bind_context(stage="postprocess")
    start = time.monotonic()
    label_values = parse_int_list(labels, "--labels") if labels else None
    if (trainer_dir is None) == (raw is None):
        raise BadInputError("give exactly one of --trainer-dir (consolidate folds) or --raw (a predictions folder)")
    if trainer_dir is not None:
        result, rules_uri = _consolidate(trainer_dir, reference, folds, label_values, resolve_workers(num_processes))
    else:
        if reference is None or label_values is None:
            raise BadInputError("--raw needs --reference and --labels")
        output = output or storage.join(storage.parent(raw), storage.basename(raw) + "_postprocessed")
        rules_uri = rules or storage.join(storage.parent(raw), "postprocessing.json")
        result = _determine_folder(raw, reference, output, rules_uri, label_values, resolve_workers(num_processes))
    write_result_json(result_json, {
        "schema_version": 1, "step": "postprocess", "postprocessing_json": rules_uri,
        "for_which_classes": result.for_which_classes, "dc_per_class_raw": result.dc_per_class_raw,
        "num_samples": result.num_samples, "seconds": round(time.monotonic() - start, 2),
    })
    typer.echo(f"postprocessing for_which_classes={result.for_which_classes} ({result.num_samples} cases): "
               f"{rules_uri}")


@app.command()
def apply(
    source: str = typer.Option(..., "--input", help="Folder or s3:// prefix of predicted label images."),
    output: str = typer.Option(..., "--output", help="Where the postprocessed label images go (may equal --input "
                               "for a local folder)."),
    rules: str = typer.Option(..., "--rules", help="postprocessing.json (ours or nnU-Net v1's) to apply."),
    num_processes: int = typer.Option(0, "--num-processes", help="Worker processes (0: the CPUs available, at "
                                      "most 8, or nnUNet_def_n_proc when set)."),
) -> None:
    """Apply a postprocessing rule set to every label image of a folder."""
    from stages.log import bind_context
    from stages.postprocess.connected_components import apply_postprocessing_to_folder
    from stages.postprocess.models import load_rules

    bind_context(stage="postprocess")
    with local_file(rules) as rules_path, local_folder(source, images_only) as src, output_folder(output) as dst:
        written = apply_postprocessing_to_folder(src, dst, load_rules(rules_path), resolve_workers(num_processes))
    typer.echo(f"postprocessed {len(written)} file(s) into {output}")
