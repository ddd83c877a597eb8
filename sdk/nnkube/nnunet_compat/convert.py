"""``nnUNet_convert_decathlon_task -i MSD_TASK_DIR [-output_task_id N] [-p NUM_PROCESSES]`` (nnU-Net v1 flags).

Writes ``$nnUNet_raw_data_base/nnUNet_raw_data/TaskXXX_NAME``. Unlike nnU-Net v1, an existing different target
is not deleted silently: it is kept and the command fails unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import os
import sys

RAW_DATA_BASE_ENV = "nnUNet_raw_data_base"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNet_convert_decathlon_task",
        description="Convert a Medical Segmentation Decathlon task (TaskXX_Name) into the nnU-Net v1 raw layout "
        f"under ${RAW_DATA_BASE_ENV}/nnUNet_raw_data/TaskXXX_Name (4D images split into one file per modality).",
    )
    parser.add_argument("-i", required=True, help="The MSD task folder, e.g. /data/Task04_Hippocampus.")
    parser.add_argument(
        "-p",
        type=int,
        default=None,
        help="Number of files converted in parallel (default: nnUNet_def_n_proc or the available CPUs, at most 8).",
    )
    parser.add_argument(
        "-output_task_id",
        type=int,
        default=None,
        help="Task id of the converted dataset (default: the MSD id, Task04 -> Task004).",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace an existing converted task whose content differs (an identical one is kept as is).",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the nnU-Net v1 flags, convert, and return the exit code (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    from stages.dataset.convert import convert_msd_task
    from stages.errors import EXIT_BAD_INPUT, NnkubeError
    from stages.log import setup_logging

    setup_logging()
    base = os.environ.get(RAW_DATA_BASE_ENV, "").strip()
    if not base:
        sys.stderr.write(
            f"nnUNet_convert_decathlon_task: the environment variable {RAW_DATA_BASE_ENV} is not set; set it to "
            "the folder that holds (or will hold) nnUNet_raw_data/\n"
        )
        return EXIT_BAD_INPUT
    try:
        target = convert_msd_task(
            args.i, base, output_task_id=args.output_task_id, num_processes=args.p, overwrite=args.overwrite,
            progress=True,
        )
    except NnkubeError as exc:
        sys.stderr.write(f"nnUNet_convert_decathlon_task: {exc}\n")
        return exc.exit_code
    sys.stdout.write(f"{target}\n")
    return 0
