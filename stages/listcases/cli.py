"""``python -m stages list-cases``: list the cases under an images prefix and write the shard plan.

Prints the indices of the non-empty shards as a JSON list on stdout (and nothing else), which an Argo step
hands to ``withParam`` to fan out one pod per shard; each pod then reads its cases from the plan.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from stages.stagekit.options import raw_prefix_option, result_json_option

app = typer.Typer(add_completion=False, help="List the cases under a prefix and write a shard plan.")


@app.command()
def list_cases(
    input_prefix: str = typer.Option(
        ..., "--input", help="Folder or s3:// prefix holding the images, <case>_XXXX.nii.gz (one file per modality)."
    ),
    num_shards: int = typer.Option(
        ..., "--num-shards", min=1,
        help="Number of shards; shard i gets every N-th case of the sorted ids, from index i.",
    ),
    output: str = typer.Option(..., "--output", help="Local path or URI where the shard plan (JSON) is written."),
    modalities: int | None = typer.Option(
        None, "--modalities", min=1,
        help="Modalities every case must have (e.g. the model's count); default: all modalities found.",
    ),
    result_json: str | None = result_json_option(),
    raw_prefix: str | None = raw_prefix_option(),
) -> None:
    """Write the shard plan of the cases under --input and print the non-empty shard indices as JSON."""
    from stages import storage
    from stages.listcases.listing import make_shard_plan
    from stages.log import bind_context
    from stages.stagekit import WriteGuard, marker_uri, protected_prefixes, run_stage

    bind_context(stage="list-cases", dataset=storage.basename(input_prefix))
    name = storage.basename(output)
    folder = storage.parent(output)

    def compute(out_dir: Path) -> dict:
        plan = make_shard_plan(input_prefix, num_shards, modalities)
        (out_dir / name).write_text(plan.to_json())
        return {"shard_plan": output, "num_cases": len(plan.cases), "num_shards": num_shards,
                "shards": plan.active_shards}

    result = run_stage(
        "list-cases", {"num_shards": num_shards, "modalities": modalities, "output_name": name},
        [input_prefix.rstrip("/") + "/"], folder, compute, result_json,
        marker=marker_uri(folder, f"list-cases.{name.removesuffix('.json')}"),
        guard=WriteGuard(protected_prefixes(raw_prefix, [input_prefix])),
    )
    sys.stdout.write(json.dumps(result.extra["shards"]) + "\n")
