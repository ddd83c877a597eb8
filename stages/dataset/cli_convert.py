"""``python -m stages convert``: MSD task -> nnU-Net v1 ``TaskXXX_NAME`` folder, local or on S3."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, help="Convert an MSD task into the nnU-Net v1 TaskXXX_NAME layout.")


@app.command()
def convert(
    input_uri: str = typer.Option(
        ..., "--input", help="MSD task folder or s3:// prefix; its last component must be TaskXX_Name."
    ),
    output_uri: str = typer.Option(
        ...,
        "--output",
        help="Folder or s3:// prefix that receives TaskXXX_NAME/ (e.g. $nnUNet_raw_data_base/nnUNet_raw_data).",
    ),
    task_id: int | None = typer.Option(
        None, "--task-id", help="Id of the converted task (default: the MSD id, Task04 -> Task004)."
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Files converted in parallel (default: available CPUs, at most 8)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing target whose content differs (identical ones are kept)."
    ),
    result_json: Path | None = typer.Option(
        None, "--result-json", help="Local path where a JSON summary (task name, output URI, counts) is written."
    ),
) -> None:
    """Convert the MSD task at --input and write TaskXXX_NAME under --output."""
    from stages.dataset.staging import convert_uri

    result = convert_uri(input_uri, output_uri, task_id=task_id, workers=workers, overwrite=overwrite, progress=True)
    if result_json is not None:
        result.save(result_json)
    sys.stdout.write(f"{result.output}\n")
