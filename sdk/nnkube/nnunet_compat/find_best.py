"""``nnUNet_find_best_configuration -m 2d 3d_fullres ... -t TASK [-tr] [-ctr] [-pl] [--strict]`` (spec §11.1).

Prints every candidate's cross-validation score, the winner and the commands to predict with it; writes
``$RESULTS_FOLDER/nnUNet/ensembles/TASK/{prediction_commands.txt, summary.csv, selection.json}``.
"""

from __future__ import annotations

import argparse
import sys

from nnkube.nnunet_compat._cli import guarded, workers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNet_find_best_configuration",
        description="Find the best configuration or pair ensemble of a task from its 5-fold cross-validation.",
    )
    parser.add_argument("-m", "--models", nargs="+", default=["2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres"],
                        help="Candidate configurations (default: all four).")
    parser.add_argument("-t", "--task_ids", nargs="+", required=True, help="Task ids or names (one or more).")
    parser.add_argument("-tr", default="nnUNetTrainerV2", help="Trainer of the non-cascade configurations.")
    parser.add_argument("-ctr", default="nnUNetTrainerV2CascadeFullRes", help="Trainer of 3d_cascade_fullres.")
    parser.add_argument("-pl", default="nnUNetPlansv2.1", help="Plans identifier.")
    parser.add_argument("-f", "--folds", nargs="+", default=["0", "1", "2", "3", "4"],
                        help="Cross-validation folds (default 0 1 2 3 4).")
    parser.add_argument("--strict", action="store_true",
                        help="Fail when a listed configuration has no trained model (default: skip it).")
    parser.add_argument("--disable_ensembling", action="store_true",
                        help="Only compare single configurations (no validation --npz outputs needed).")
    parser.add_argument("--force", action="store_true",
                        help="Recompute consolidations and ensembles even when they are up to date.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the nnU-Net v1 flags, select per task, print the report; return the exit code."""
    args = _parser().parse_args(argv)

    def work() -> None:
        from stages.paths import env_folder, resolve_task
        from stages.postprocess.staging import parse_folds
        from stages.select.find_best import find_best_configuration
        from stages.select.report import format_report

        results = env_folder("RESULTS_FOLDER")
        folds = parse_folds(",".join(args.folds))
        for task_id in args.task_ids:
            task = resolve_task(task_id, *(results / "nnUNet" / m for m in args.models))
            selection = find_best_configuration(
                results, task, args.models, args.tr, args.ctr, args.pl, folds, strict=args.strict,
                allow_ensembling=not args.disable_ensembling, num_processes=workers(), force=args.force,
            )
            sys.stdout.write(format_report(selection))

    return guarded("nnUNet_find_best_configuration", work)
