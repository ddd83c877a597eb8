"""``nnUNet_ensemble -f FOLDER1 FOLDER2 ... -o OUTPUT [-pp postprocessing.json] [--npz]`` (spec §11.3)."""

from __future__ import annotations

import argparse
import sys

from nnkube.nnunet_compat._cli import guarded, workers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNet_ensemble",
        description="Average the saved probabilities (<case>.npz from nnUNet_predict -z) of several prediction "
        "folders and write the argmax label maps.",
    )
    parser.add_argument("-f", "--folders", nargs="+", required=True,
                        help="Prediction folders made with nnUNet_predict -z (--save_npz).")
    parser.add_argument("-o", "--output_folder", required=True, help="Where the ensembled predictions go.")
    parser.add_argument("-pp", "--postprocessing_file", default=None,
                        help="postprocessing.json to apply (raw results then go to OUTPUT/not_postprocessed/).")
    parser.add_argument("--npz", action="store_true", help="Also store the averaged probabilities.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the nnU-Net v1 flags, ensemble, and return the exit code (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)

    def work() -> None:
        from stages.ensemble.merge import ensemble_folders

        cases = ensemble_folders(args.folders, args.output_folder, args.postprocessing_file, save_npz=args.npz,
                                 num_processes=workers())
        sys.stdout.write(f"ensembled {len(cases)} case(s) into {args.output_folder}\n")

    return guarded("nnUNet_ensemble", work)
