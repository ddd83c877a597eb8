"""``python -m stages fingerprint``: extract the fingerprint of a raw task (local folder or S3 prefix)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

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
    result_json: Path | None = typer.Option(
        None, "--result-json", help="Local path receiving a small JSON summary (output URI, case count, time)."
    ),
) -> None:
    """Crop every training case to its nonzero region, summarize it and write the fingerprint document."""
    from stages import storage
    from stages.dataset.staging import local_folder
    from stages.documents import write_json_atomic
    from stages.fingerprint.extract import extract_fingerprint
    from stages.log import bind_context
    from stages.resources import default_workers

    bind_context(stage="fingerprint", dataset=storage.basename(dataset))
    start = time.monotonic()
    workers = num_processes or default_workers("nnUNet_def_n_proc", cap=8)
    with local_folder(dataset) as folder:
        fp = extract_fingerprint(folder, num_processes=workers)
    storage.write_text(output, fp.to_json())
    summary = {
        "fingerprint": output,
        "num_cases": len(fp.cases),
        "modalities": {str(k): v for k, v in fp.modalities.items()},
        "all_classes": fp.all_classes,
        "seconds": round(time.monotonic() - start, 2),
    }
    if result_json is not None:
        write_json_atomic(result_json, summary)
    sys.stdout.write(f"fingerprint of {len(fp.cases)} cases written to {output}\n")
