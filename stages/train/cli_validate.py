"""``python -m stages validate``: rerun the final validation of a trained fold from S3 (nnU-Net's ``-val``).

Downloads the fold's ``model_final_checkpoint.model`` (and sidecar) and what validation reads from the
preprocessed prefix, predicts the fold's validation cases, and uploads ``validation_raw/`` with its
summary.json. Its completion marker is ``fold_F/_NNKUBE_COMPLETE.validate.json``: a rerun with the same final
checkpoint, data and options is skipped.
"""

from __future__ import annotations

from pathlib import Path

import typer

from stages import storage
from stages.stagekit.options import raw_prefix_option, result_json_option
from stages.train import cli as train_cli

app = typer.Typer(add_completion=False, help="Rerun the final validation of a trained fold.")


@app.command()
def validate(
    preprocessed: str = train_cli.preprocessed_option(),
    output: str = typer.Option(..., "--output", help="Trainer folder (local or s3://) holding fold_F/ with "
                               "model_final_checkpoint.model."),
    configuration: str = train_cli.configuration_option(),
    fold: str = typer.Option(..., "--fold", help="Fold index or 'all'."),
    trainer: str = train_cli.trainer_option(),
    plans_identifier: str = train_cli.plans_identifier_option(),
    npz: bool = typer.Option(False, "--npz", help="Also export softmax probabilities of the validation cases."),
    task: str | None = typer.Option(None, "--task", help="Task name for logs (default: last part of "
                                    "--preprocessed)."),
    prev_stage: str | None = train_cli.prev_stage_option(),
    artifacts_dir: Path | None = train_cli.artifacts_option(),
    result_json: str | None = result_json_option(),
    raw_prefix: str | None = raw_prefix_option(),
) -> None:
    """Validate a trained fold again with its final checkpoint and upload the results."""
    from stages.log import bind_context
    from stages.stagekit import WriteGuard, protected_prefixes, run_stage, scratch_dir
    from stages.stagekit.run import marker_uri
    from stages.train.checkpoint import FINAL

    fold_value = train_cli.parse_fold(fold)
    train_cli.check_configuration(configuration)
    task = task or storage.basename(preprocessed)
    bind_context(stage="validate", dataset=task, configuration=configuration, fold=str(fold_value))
    guard = WriteGuard(protected_prefixes(raw_prefix, [preprocessed]))
    fold_dir = f"fold_{fold_value}"
    pre_inputs = train_cli.preprocessed_inputs(preprocessed, configuration, plans_identifier)
    prev_prefix = train_cli.prev_stage_prefix(prev_stage, output, configuration, trainer, plans_identifier)
    checkpoint = storage.join(output, fold_dir, FINAL)
    syncs: list[train_cli.FoldSync] = []

    def compute(out_dir: Path) -> dict:
        sync = train_cli.FoldSync(out_dir, output, fold_dir, guard, artifacts_dir=artifacts_dir)
        syncs.append(sync)
        sync.download(f"{fold_dir}/{FINAL}")
        sync.download(f"{fold_dir}/{FINAL}.json")
        with scratch_dir("validate-input") as work:
            local_pre = train_cli.stage_preprocessed(preprocessed, pre_inputs, work / task)
            summary = train_cli._train_fold_fn()(
                local_pre, out_dir, configuration, fold_value, trainer_name=trainer,
                plans_identifier=plans_identifier, validation_only=True, save_npz=npz, task=task,
                trainer_hook=train_cli.cascade_hook(prev_prefix, work),
            )
        return train_cli.fold_extra(sync, summary, output, configuration, fold_value)

    params = {"trainer": trainer, "configuration": configuration, "fold": str(fold_value),
              "plans_identifier": plans_identifier, "npz": npz}
    result = run_stage(
        "validate", params, [*pre_inputs, *([prev_prefix] if prev_prefix else []), checkpoint, checkpoint + ".json"],
        output, compute, result_json,
        marker=marker_uri(storage.join(output, fold_dir), "validate"), guard=guard,
        publish=lambda _out, _prefix: syncs[-1].publish(prune_latest=False), check_outputs="exists",
    )
    if result.status == "skipped":
        train_cli.fetch_artifacts(output, fold_dir, artifacts_dir)
    typer.echo(f"fold {fold_value} of {configuration} validated ({result.status}): foreground mean Dice "
               f"{result.extra.get('dice')}")
