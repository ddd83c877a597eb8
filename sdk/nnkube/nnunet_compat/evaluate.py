"""``nnUNet_evaluate_folder -ref REFERENCE -pred PREDICTIONS -l 1 2 ...`` (nnU-Net v1 flags).

Writes ``PREDICTIONS/summary.json`` in nnU-Net's format (spec §6.8).
"""

from __future__ import annotations

import argparse
import sys

from nnkube.nnunet_compat._cli import guarded, workers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNet_evaluate_folder",
        description="Evaluate every predicted label image against the same-named reference; writes "
        "summary.json into the prediction folder.",
    )
    parser.add_argument("-ref", required=True, help="Folder of reference segmentations (<case>.nii.gz).")
    parser.add_argument("-pred", required=True, help="Folder of predicted segmentations with the same names.")
    parser.add_argument("-l", nargs="+", type=int, required=True,
                        help="Label values to evaluate, e.g. -l 1 2 (add 0 to include the background).")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the nnU-Net v1 flags, evaluate, and return the exit code (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)

    def work() -> None:
        from stages.evaluate.evaluator import evaluate_folder
        from stages.postprocess.determine import foreground_score
        from stages.postprocess.staging import format_score

        summary = evaluate_folder(args.ref, args.pred, args.l, num_processes=workers())
        sys.stdout.write(f"foreground mean Dice {format_score(foreground_score(summary))} "
                         f"({len(summary['results']['all'])} cases): {args.pred}/summary.json\n")

    return guarded("nnUNet_evaluate_folder", work)
