"""What model selection tells people: scores, the winner, prediction commands, ``summary.csv`` (spec §11.1)."""

from __future__ import annotations

from pathlib import Path

from stages.fsutil import atomic_path
from stages.postprocess.staging import format_score
from stages.select.models import PREDICTION_COMMANDS, SELECTION_JSON, SUMMARY_CSV, Selection


def _predict_command(selection: Selection, configuration: str, output: str, save_npz: bool) -> str:
    cmd = (f"nnUNet_predict -i FOLDER_WITH_TEST_CASES -o {output} -tr {selection.trainer} "
           f"-ctr {selection.cascade_trainer} -m {configuration} -p {selection.plans_identifier} -t {selection.task}")
    return cmd + " -z" if save_npz else cmd


def prediction_commands(selection: Selection) -> list[str]:
    """The ``nnUNet_predict`` (and, for a pair, ``nnUNet_ensemble``) commands that reproduce the winner."""
    if not selection.is_ensemble:
        return [_predict_command(selection, selection.models[0].configuration, "OUTPUT_FOLDER", False)]
    outputs = [f"OUTPUT_FOLDER_MODEL{i + 1}" for i in range(len(selection.models))]
    cmds = [_predict_command(selection, m.configuration, o, True) for m, o in zip(selection.models, outputs)]
    cmds.append(f"nnUNet_ensemble -f {' '.join(outputs)} -o OUTPUT_FOLDER -pp "
                f"{selection.resolve(selection.postprocessing_json)}")
    return cmds


def summary_csv(summaries: dict[str, dict]) -> str:
    """``model,<label 1>,...,<label N>,average`` with the case-averaged Dice per foreground label (4 decimals)."""
    labels: list[str] = []
    for summary in summaries.values():
        for key in summary["results"]["mean"]:
            if key not in ("0", "mean") and key not in labels:
                labels.append(key)
    labels.sort(key=int)
    lines = [",".join(["model", *labels, "average"])]
    for name, summary in summaries.items():
        mean = summary["results"]["mean"]
        values = [mean.get(k, {}).get("Dice") for k in labels]
        average = mean.get("mean", {}).get("Dice")
        lines.append(",".join([name, *(format_score(v) for v in values), format_score(average)]))
    return "\n".join(lines) + "\n"


def format_report(selection: Selection) -> str:
    """Text for people: every ``name score``, the winner, and the commands to predict with it."""
    lines = [f"{name} {format_score(score)}" for name, score in selection.scores.items()]
    tied = [n for n, s in selection.scores.items() if s == selection.score and n != selection.best]
    if tied:
        lines.append(f"tied with the winner (the last one wins): {', '.join(tied)}")
    lines += [
        "",
        f"{selection.task} submit model {selection.best} {format_score(selection.score)}",
        "",
        "Run inference with:",
        *selection.commands,
        "",
        f"postprocessing: {selection.resolve(selection.postprocessing_json)}",
    ]
    if selection.skipped_configurations:
        lines.append(f"skipped (no trained model): {', '.join(selection.skipped_configurations)}")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_outputs(selection: Selection, summaries: dict[str, dict], out_root: Path) -> None:
    """Write ``prediction_commands.txt``, ``summary.csv`` and ``selection.json`` into ``out_root``."""
    _write_text(out_root / PREDICTION_COMMANDS, "\n".join(selection.commands) + "\n")
    _write_text(out_root / SUMMARY_CSV, summary_csv(summaries))
    selection.save(out_root / SELECTION_JSON)

