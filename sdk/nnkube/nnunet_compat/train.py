"""``nnUNet_train``, ``nnUNet_train_DDP`` and ``nnUNet_train_DP`` with nnU-Net v1's arguments and folders."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from stages.errors import NnkubeError
from stages.log import setup_logging

log = logging.getLogger("nnUNet_train")


def build_parser(prog: str = "nnUNet_train") -> argparse.ArgumentParser:
    """Argument parser with nnU-Net v1's positional arguments and flags."""
    p = argparse.ArgumentParser(prog=prog, description="Train one configuration x fold of a task (nnU-Net v1).")
    p.add_argument("network", help="configuration: 2d, 3d_fullres, 3d_lowres or 3d_cascade_fullres")
    p.add_argument("network_trainer", help="trainer class name, e.g. nnUNetTrainerV2 or nnUNetTrainerV2_5epochs")
    p.add_argument("task", help="task name (Task004_Hippocampus) or id (4)")
    p.add_argument("fold", help="fold 0-4, or 'all' (train on every case)")
    p.add_argument("-val", "--validation_only", action="store_true",
                   help="only rerun the final validation with the final checkpoint")
    p.add_argument("-c", "--continue_training", action="store_true",
                   help="continue from the latest checkpoint of the fold folder")
    p.add_argument("-p", dest="plans_identifier", default="nnUNetPlansv2.1", help="plans identifier")
    p.add_argument("--npz", action="store_true",
                   help="also save softmax probabilities of the validation cases (needed for ensembling)")
    p.add_argument("--epochs", type=int, default=None, help="override the trainer's number of epochs")
    p.add_argument("--iterations", type=int, default=None, help="override training iterations per epoch")
    p.add_argument("--val_iterations", type=int, default=None, help="override validation batches per epoch")
    p.add_argument("--save_every", type=int, default=None,
                   help="write model_latest.model every N epochs (default 50)")
    p.add_argument("--fp32", action="store_true", help="disable mixed precision (AMP is used on CUDA only)")
    p.add_argument("--deterministic", action="store_true",
                   help="reseed every epoch and run augmentation in-process for reproducible runs")
    p.add_argument("--num_workers", type=int, default=None,
                   help="augmentation worker processes (default: nnUNet_n_proc_DA or the CPUs available)")
    p.add_argument("--disable_validation", action="store_true", help="skip the final validation")
    p.add_argument("--dbs", action="store_true",
                   help="DDP: distribute the planned batch over the processes instead of using it on each")
    p.add_argument("-gpus", "--gpus", "--nproc", dest="gpus", type=int, default=None,
                   help="nnUNet_train_DDP/_DP only: number of processes to launch (default: the GPUs, else 1)")
    return p


def _config(args: argparse.Namespace) -> dict:
    cfg = {
        "max_epochs": args.epochs,
        "iterations_per_epoch": args.iterations,
        "val_iterations": args.val_iterations,
        "save_every": args.save_every,
        "num_workers": args.num_workers,
        "deterministic": args.deterministic or None,
        "distribute_batch": args.dbs or None,
    }
    if args.fp32:
        cfg["amp"] = False
    return {k: v for k, v in cfg.items() if v is not None}


def run(argv: list[str] | None = None, prog: str = "nnUNet_train") -> int:
    """Parse ``argv`` and train; returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    setup_logging()
    from stages.paths import env_folder, resolve_task, trainer_dir
    from stages.train.ddp import init_from_env, shutdown
    from stages.train.run import train_fold

    try:
        preprocessed = env_folder("nnUNet_preprocessed")
        results = env_folder("RESULTS_FOLDER")
        task = resolve_task(args.task, preprocessed)
        info = init_from_env()
        try:
            summary = train_fold(
                preprocessed / task,
                trainer_dir(results, args.network, task, args.network_trainer, args.plans_identifier),
                args.network, args.fold, args.network_trainer, args.plans_identifier, _config(args),
                resume=args.continue_training, validation_only=args.validation_only, save_npz=args.npz,
                run_validation=not args.disable_validation, task=task, dist_info=info,
            )
        finally:
            shutdown()
    except NnkubeError as exc:
        log.error("%s", exc)
        return exc.exit_code
    if summary is not None:
        dice = summary["results"]["mean"].get("mean", {}).get("Dice")
        log.info("validation foreground mean Dice: %s", dice)
    return 0


def main() -> int:
    """``nnUNet_train``."""
    return run(sys.argv[1:])


def _launch_torchrun(prog: str) -> int:
    """Re-launch this command under torchrun with ``-gpus/--nproc`` processes (DDP)."""
    argv = list(sys.argv[1:])
    nproc = None
    for flag in ("-gpus", "--gpus", "--nproc"):
        if flag in argv:
            i = argv.index(flag)
            nproc = int(argv[i + 1])
            del argv[i : i + 2]
    if os.environ.get("WORLD_SIZE"):  # already under torchrun
        return run(argv, prog)
    if nproc is None:
        import torch

        nproc = max(1, torch.cuda.device_count())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "nnkube.nnunet_compat.train", *argv]
    return subprocess.call(cmd)


def main_ddp() -> int:
    """``nnUNet_train_DDP CONFIG TRAINER TASK FOLD [-gpus N] [--dbs] ...``: torchrun, NCCL on GPUs, gloo on CPU."""
    return _launch_torchrun("nnUNet_train_DDP")


def main_dp() -> int:
    """``nnUNet_train_DP``: nnU-Net v1's DataParallel, mapped onto DDP."""
    return _launch_torchrun("nnUNet_train_DP")


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
