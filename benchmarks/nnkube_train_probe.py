"""Time nnkube's training iterations and training data loader (our side of ``bench_train.py``).

Runs in the nnkube venv. Builds the pieces ``nnUNet_train`` trains with, through ``nnUNetTrainerV2``'s own hooks:
the Generic U-Net (``build_network``), DC+CE with deep supervision (``DCandCELoss`` + ``DeepSupervisionLoss``),
SGD with Nesterov momentum, and the moreDA batch stream with ``--workers`` augmentation processes
(``stages.train.pipeline.make_training_data``). Then times ``--warmup`` untimed and ``--iterations`` timed training
iterations (``train_step``: forward, loss, backward, gradient clipping, optimizer step) and, after draining
every buffered batch, ``--loader-batches`` draws from the training stream alone, exactly as the nnU-Net v2
launcher's ``train_iterations`` does. Prints ``RESULT {json}`` with the same keys as the launcher.

    .venv/bin/python benchmarks/nnkube_train_probe.py \
        --preprocessed .bench/data/nnkube/preprocessed/Task004_Hippocampus --output .bench/train/probe \
        -n 10 --warmup 2 --loader-batches 20 --workers 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import harness  # this folder; stdlib only, so it imports in either venv


def _buffered_batches(augmenter: Any) -> int:
    """Upper bound on the batches an ``Augmenter`` holds ready: its queue, each worker's outbox and in-flight."""
    queue_size = getattr(getattr(augmenter, "_out", None), "maxsize", 0) or 0
    return queue_size + augmenter.num_workers * (augmenter.num_cached_per_worker + 2) + 1


def measure(preprocessed: Path, output: Path, configuration: str, fold: int, iterations: int, warmup: int,
            loader_batches: int, workers: int, threads: int) -> dict[str, Any]:
    """Build the trainer's pieces, time the training iterations and the data loader; return the figures."""
    import torch

    from stages.plan.models import PLANS_IDENTIFIER
    from stages.train.run import load_plans_for
    from stages.train.trainer import nnUNetTrainerV2

    torch.set_num_threads(threads)
    plans = load_plans_for(preprocessed, configuration, PLANS_IDENTIFIER)
    trainer = nnUNetTrainerV2(plans, configuration, fold, preprocessed, output, config={"num_workers": workers},
                              device="cpu")
    started = time.perf_counter()
    train_keys, val_keys = trainer.split()
    trainer.initialize()
    data = trainer.build_data(train_keys, val_keys)
    setup_s = time.perf_counter() - started
    trainer.network.train()
    trainer.network.do_ds = True
    step_s: list[float] = []
    try:
        for index in range(warmup + iterations):
            t0 = time.perf_counter()
            trainer.train_step(next(data.train))
            if index >= warmup:
                step_s.append(time.perf_counter() - t0)
        for _ in range(_buffered_batches(data.train)):
            next(data.train)
        t0 = time.perf_counter()
        for _ in range(loader_batches):
            next(data.train)
        loader_s = time.perf_counter() - t0
    finally:
        data.close()
    return {
        "configuration": configuration,
        "fold": fold,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "n_proc_da": data.train.num_workers,
        "batch_size": int(trainer.stage_plan.batch_size),
        "patch_size": [int(v) for v in trainer.stage_plan.patch_size],
        **harness.iteration_timings(setup_s, iterations, step_s, loader_batches, loader_s),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the options, measure, print ``RESULT {json}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preprocessed", type=Path, required=True,
                        help="the task's preprocessed folder ($nnUNet_preprocessed/Task004_Hippocampus)")
    parser.add_argument("--output", type=Path, required=True, help="scratch fold folder for the trainer's log")
    parser.add_argument("-c", "--configuration", default="3d_fullres", help="configuration to train")
    parser.add_argument("-f", "--fold", type=int, default=0, help="cross-validation fold")
    parser.add_argument("-n", "--iterations", type=int, default=10, help="timed training iterations")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--loader-batches", type=int, default=20, help="batches drawn to time the data loader")
    parser.add_argument("--workers", type=int, required=True, help="augmentation worker processes")
    parser.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    args = parser.parse_args(argv)
    result = measure(args.preprocessed, args.output, args.configuration, args.fold, args.iterations, args.warmup,
                     args.loader_batches, args.workers, args.threads)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
