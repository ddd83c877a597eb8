"""``python -m stages convert``: MSD task -> nnU-Net v1 ``TaskXXX_NAME`` folder, local or on S3.

Idempotent: the task folder's completion marker records the MSD input's identity, so converting the same
input again skips the work; the task folder is published ``dataset.json`` last, then the marker.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import typer

from stages.stagekit.options import raw_prefix_option, result_json_option

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
    result_json: str | None = result_json_option(),
    raw_prefix: str | None = raw_prefix_option(),
) -> None:
    """Convert the MSD task at --input and write TaskXXX_NAME under --output."""
    from stages import storage
    from stages.dataset.convert import conversion_result, convert_msd_task_to, target_task_name
    from stages.dataset.staging import local_folder, publish_tree
    from stages.log import bind_context
    from stages.stagekit import WriteGuard, protected_prefixes, run_stage, scratch_dir

    task = target_task_name(storage.basename(input_uri), task_id).format()  # a bad name fails before any I/O
    dest = storage.join(output_uri, task)
    bind_context(stage="convert", dataset=task)

    def compute(out_dir: Path) -> dict:
        with local_folder(input_uri) as msd, scratch_dir("convert") as scratch:
            converted = convert_msd_task_to(msd, scratch, task_id, workers, overwrite=True, progress=True)
            summary = conversion_result(converted, output=dest)
            for child in converted.iterdir():
                shutil.move(str(child), out_dir / child.name)
        return summary.model_dump(exclude={"schema_version"})

    def publish(out_dir: Path, prefix: str) -> None:
        publish_tree(out_dir, prefix, overwrite)

    run_stage(
        "convert", {"task_id": task_id}, [input_uri.rstrip("/") + "/"], dest, compute, result_json,
        guard=WriteGuard(protected_prefixes(raw_prefix, [input_uri])), publish=publish,
    )
    sys.stdout.write(f"{dest}\n")
