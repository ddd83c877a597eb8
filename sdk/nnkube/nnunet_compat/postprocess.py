"""``nnUNet_determine_postprocessing -t TASK -m CONFIG [-tr TRAINER] [-pl PLANS] [-f FOLDS]`` (spec §10).

Consolidates the model's folds into ``cv_niftis_raw/`` under ``$RESULTS_FOLDER/nnUNet/CONFIG/TASK/TRAINER__PLANS``
and writes ``cv_niftis_postprocessed/`` and ``postprocessing.json`` there.
"""

from __future__ import annotations

import argparse
import sys

from nnkube.nnunet_compat._cli import guarded, workers

DEFAULT_TRAINER = "nnUNetTrainerV2"
DEFAULT_CASCADE_TRAINER = "nnUNetTrainerV2CascadeFullRes"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNet_determine_postprocessing",
        description="Consolidate a model's cross-validation and decide its connected-component postprocessing.",
    )
    parser.add_argument("-t", "--task", required=True, help="Task name (Task004_Hippocampus) or id (4).")
    parser.add_argument("-m", "--model", required=True,
                        help="Configuration: 2d, 3d_lowres, 3d_fullres or 3d_cascade_fullres.")
    parser.add_argument("-tr", "--trainer", default=None,
                        help=f"Trainer (default {DEFAULT_TRAINER}; {DEFAULT_CASCADE_TRAINER} for 3d_cascade_fullres).")
    parser.add_argument("-pl", "--plans", default="nnUNetPlansv2.1", help="Plans identifier.")
    parser.add_argument("-f", "--folds", nargs="+", default=["0", "1", "2", "3", "4"],
                        help="Folds to consolidate (default 0 1 2 3 4).")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the nnU-Net v1 flags, consolidate, and return the exit code (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)

    def work() -> None:
        from stages.paths import env_folder, resolve_task, trainer_dir
        from stages.postprocess.consolidate import GT_NIFTIS, consolidate_folds
        from stages.postprocess.staging import parse_folds

        results = env_folder("RESULTS_FOLDER")
        task = resolve_task(args.task, results / "nnUNet" / args.model)
        trainer = args.trainer or (DEFAULT_CASCADE_TRAINER if args.model == "3d_cascade_fullres" else DEFAULT_TRAINER)
        folder = trainer_dir(results, args.model, task, trainer, args.plans)
        gt = folder / GT_NIFTIS
        if not gt.is_dir():  # fall back to the preprocessed task's copy of the references
            gt = env_folder("nnUNet_preprocessed") / task / "gt_segmentations"
        rules = consolidate_folds(folder, gt, parse_folds(",".join(args.folds)), num_processes=workers())
        sys.stdout.write(f"for_which_classes={rules.for_which_classes}: {folder / 'postprocessing.json'}\n")

    return guarded("nnUNet_determine_postprocessing", work)
