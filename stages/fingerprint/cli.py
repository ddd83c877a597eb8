"""``python -m stages fingerprint``: extract the fingerprint of a raw task (local folder or S3 prefix).

Idempotent: a rerun on an unchanged dataset finds its completion marker (``_NNKUBE_COMPLETE.<name>.json`` next
to the fingerprint file) and skips the work.
"""

from __future__ import annotations

import sys

import typer

from stages.stagekit.options import raw_prefix_option, result_json_option

app = typer.Typer(add_completion=False, help="Extract the dataset fingerprint (crop, shapes, intensities).")


@app.command()
def fingerprint(
    dataset: str = typer.Option(
        ..., "--dataset", help="Raw task folder or s3:// prefix with dataset.json, imagesTr/ and labelsTr/."
    ),
    output: str = typer.Option(
        ..., "--output", help="Where fingerprint.json is written: a local path or an s3:// URI."
    ),
    num_processes: int | None = typer.Option(
        None, "--num-processes", min=1,
        help="Cases analysed in parallel (default: nnUNet_def_n_proc, else the available CPUs, at most 8).",
    ),
    result_json: str | None = result_json_option(),
    raw_prefix: str | None = raw_prefix_option(),
) -> None:
    """Crop every training case to its nonzero region, summarize it and write the fingerprint document."""
    from pathlib import Path

    from stages import storage
    from stages.dataset.layout import IMAGES_TR, LABELS_TR
    from stages.dataset.models import DATASET_JSON
    from stages.dataset.staging import local_folder
    from stages.fingerprint.extract import extract_fingerprint
    from stages.log import bind_context
    from stages.resources import default_workers
    from stages.stagekit import WriteGuard, marker_uri, protected_prefixes, run_stage

    bind_context(stage="fingerprint", dataset=storage.basename(dataset))
    workers = num_processes or default_workers("nnUNet_def_n_proc", cap=8)
    name = storage.basename(output)
    folder_uri = storage.parent(output)

    def compute(out_dir: Path) -> dict:
        with local_folder(dataset) as folder:
            fp = extract_fingerprint(folder, num_processes=workers)
        (out_dir / name).write_text(fp.to_json())
        return {
            "fingerprint": output,
            "num_cases": len(fp.cases),
            "modalities": {str(k): v for k, v in fp.modalities.items()},
            "all_classes": fp.all_classes,
        }

    inputs = [storage.join(dataset, DATASET_JSON), storage.join(dataset, IMAGES_TR) + "/",
              storage.join(dataset, LABELS_TR) + "/"]
    result = run_stage(
        "fingerprint", {"output_name": name}, inputs, folder_uri, compute, result_json,
        marker=marker_uri(folder_uri, name.removesuffix(".json")),
        guard=WriteGuard(protected_prefixes(raw_prefix, [dataset])),
    )
    sys.stdout.write(f"fingerprint of {result.extra['num_cases']} cases {result.status}: {output}\n")
