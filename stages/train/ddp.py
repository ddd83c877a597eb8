"""Single-node multi-process data parallel training (``nnUNet_train_DDP``), NCCL on GPUs, gloo on CPU.

Processes are started by torchrun (``python -m torch.distributed.run``), which sets RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous address. Only rank 0 writes files. With ``--dbs`` the planned batch is
distributed over the ranks; the foreground-oversampled samples form the tail 33 % of the *global* batch
(spec §12).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from stages.errors import BadInputError


@dataclass(frozen=True)
class DistInfo:
    """Rank and world size of this process (1 process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1


def init_from_env() -> DistInfo:
    """Join the process group torchrun prepared (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def shutdown() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def batch_and_oversample(batch_size: int, info: DistInfo, distribute_batch: bool,
                         oversample: float = 0.33) -> tuple[int, float]:
    """Per-rank batch size and foreground-oversampling fraction (spec §12, ``set_batch_size_and_oversample``).

    Args:
        batch_size: The planned batch size.
        info: This process's rank and world size.
        distribute_batch: ``--dbs``: split the planned batch over the ranks instead of using it on each.
        oversample: Fraction of the global batch that is foreground-forced.

    Returns:
        ``(per_rank_batch_size, per_rank_oversample_fraction)``.
    """
    if not info.enabled:
        return batch_size, oversample
    if not distribute_batch:
        sizes = [batch_size] * info.world_size
    else:
        if batch_size < info.world_size:
            raise BadInputError(
                f"--dbs: batch size {batch_size} is smaller than the number of processes {info.world_size}"
            )
        per = math.ceil(batch_size / info.world_size)
        sizes = [per] * info.world_size
        for r in reversed(range(info.world_size)):  # the last ranks take the remainder
            excess = sum(sizes) - batch_size
            if excess <= 0:
                break
            sizes[r] -= min(excess, per - 1)
    global_bs = sum(sizes)
    tail_start = global_bs * (1 - oversample)
    start = sum(sizes[: info.rank])
    end = start + sizes[info.rank]
    if end <= tail_start:
        frac = 0.0
    elif start >= tail_start:
        frac = 1.0
    else:
        frac = (end - tail_start) / sizes[info.rank]
    return sizes[info.rank], frac


def barrier() -> None:
    """Wait for every rank (no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
