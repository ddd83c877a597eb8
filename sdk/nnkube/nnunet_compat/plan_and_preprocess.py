"""``nnUNet_plan_and_preprocess -t XXX [--verify_dataset_integrity] [-tl N] [-tf N] [-pl3d P] [-pl2d P] [-no_pp]``."""

from __future__ import annotations

import argparse
import logging
import sys

from stages.errors import NnkubeError
from stages.log import setup_logging

log = logging.getLogger("nnUNet_plan_and_preprocess")


def build_parser() -> argparse.ArgumentParser:
    """Argument parser with nnU-Net v1's flags."""
    p = argparse.ArgumentParser(
        prog="nnUNet_plan_and_preprocess",
        description="Fingerprint, plan and preprocess raw tasks from $nnUNet_raw_data_base/nnUNet_raw_data into "
        "$nnUNet_preprocessed (nnU-Net v1 layout; plans are written as JSON).",
    )
    p.add_argument("-t", "--task_ids", nargs="+", required=True,
                   help="task ids (4) or names (Task004_Hippocampus) to process")
    p.add_argument("-pl3d", "--planner3d", default="ExperimentPlanner3D_v21",
                   help="3D planner class name; 'None' skips 3D planning")
    p.add_argument("-pl2d", "--planner2d", default="ExperimentPlanner2D_v21",
                   help="2D planner class name; 'None' skips 2D planning")
    p.add_argument("-no_pp", action="store_true", help="plan only, do not preprocess")
    p.add_argument("-tl", type=int, default=8, help="processes for the 3d_lowres stage of a cascade (default 8)")
    p.add_argument("-tf", type=int, default=8,
                   help="processes for fingerprinting and all other stages (default 8); lower it if RAM runs out")
    p.add_argument("--verify_dataset_integrity", action="store_true",
                   help="check the raw dataset first and stop with a report of every problem")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    from stages.paths import env_folder, raw_task_dir, resolve_task
    from stages.preprocess.pipeline import plan_and_preprocess

    none = {"none", "None"}
    try:
        raw_base = env_folder("nnUNet_raw_data_base")
        preprocessed = env_folder("nnUNet_preprocessed")
        for t in args.task_ids:
            task = resolve_task(t, raw_base / "nnUNet_raw_data")
            plan_and_preprocess(
                raw_task_dir(raw_base, task), preprocessed / task,
                planner_3d=None if args.planner3d in none else args.planner3d,
                planner_2d=None if args.planner2d in none else args.planner2d,
                verify=args.verify_dataset_integrity, num_processes_lowres=args.tl,
                num_processes_fullres=args.tf, preprocess=not args.no_pp,
            )
    except NnkubeError as exc:
        log.error("%s", exc)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
