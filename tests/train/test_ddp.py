"""Multi-process training: per-rank batch and oversampling (spec §12), and ``nnUNet_train_DDP`` on CPU (gloo)."""

from __future__ import annotations

import math
import re
import sys

import pytest
from nnkube.nnunet_compat.train import main_ddp

from stages.errors import BadInputError
from stages.train.checkpoint import FINAL, LATEST, TrainingState, sidecar
from stages.train.data import num_forced_foreground
from stages.train.ddp import DistInfo, batch_and_oversample
from tests.train.conftest import REPO_ROOT, TASK_ID, check_validation, fold_dir, set_env

P = 0.33


def _per_rank(batch_size: int, world: int, dbs: bool) -> list[tuple[int, float]]:
    return [batch_and_oversample(batch_size, DistInfo(rank=r, world_size=world, local_rank=r), dbs, P)
            for r in range(world)]


def test_single_process_keeps_the_plan():
    assert batch_and_oversample(7, DistInfo(), True, P) == (7, P)
    assert batch_and_oversample(7, DistInfo(), False, P) == (7, P)


# Expected values from spec §12: the forced samples are the tail 33 % of the global batch; a rank entirely before
# the tail gets 0, one inside it 1, the straddling rank the share of its samples inside the tail.
@pytest.mark.parametrize(("batch_size", "world", "dbs", "expected"), [
    (2, 2, False, [(2, 0.0), (2, (4 - 4 * (1 - P)) / 2)]),
    (2, 4, False, [(2, 0.0), (2, 0.0), (2, (6 - 8 * (1 - P)) / 2), (2, 1.0)]),
    (2, 2, True, [(1, 0.0), (1, 2 - 2 * (1 - P))]),
    (5, 2, True, [(3, 0.0), (2, (5 - 5 * (1 - P)) / 2)]),
    (7, 3, True, [(3, 0.0), (3, (6 - 7 * (1 - P)) / 3), (1, 1.0)]),
    (9, 3, True, [(3, 0.0), (3, 0.0), (3, (9 - 9 * (1 - P)) / 3)]),
])
def test_batch_and_oversample_per_rank(batch_size, world, dbs, expected):
    got = _per_rank(batch_size, world, dbs)
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [f for _, f in got] == pytest.approx([f for _, f in expected])
    # the ranks' forced samples add up to what one process would force in the global batch
    global_bs = sum(s for s, _ in got)
    assert sum(num_forced_foreground(s, f) for s, f in got) == num_forced_foreground(global_bs, P)


@pytest.mark.parametrize(("batch_size", "world", "dbs"), [
    (bs, world, dbs) for bs in (2, 5, 8, 12, 13) for world in (2, 3, 4, 8) for dbs in (False, True)
    if not (dbs and bs < world)
])
def test_forced_share_of_the_global_batch(batch_size, world, dbs):
    got = _per_rank(batch_size, world, dbs)
    sizes = [s for s, _ in got]
    fractions = [f for _, f in got]
    assert sum(sizes) == (batch_size if dbs else batch_size * world)
    assert min(sizes) >= 1 and (not dbs or max(sizes) == math.ceil(batch_size / world))
    assert sizes == sorted(sizes, reverse=True)  # the last ranks take the remainder
    assert all(0.0 <= f <= 1.0 for f in fractions) and fractions == sorted(fractions)
    assert sum(s * f for s, f in got) == pytest.approx(P * sum(sizes))


def test_dbs_needs_a_sample_per_rank():
    with pytest.raises(BadInputError, match="batch size 2 is smaller than the number of processes 3"):
        batch_and_oversample(2, DistInfo(rank=0, world_size=3), True, P)


def _layout(fold) -> set[str]:
    """Relative paths of a trainer folder, with the timestamp of training logs blanked out."""
    root = fold.parent
    return {re.sub(r"training_log_.*\.txt$", "training_log_<date>.txt", str(p.relative_to(root)))
            for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_nnunet_train_ddp_two_cpu_processes(tiny_task, trained_3d, tmp_path, monkeypatch, capfd):
    results = tmp_path / "results"
    set_env(monkeypatch, tiny_task, results)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(sys, "argv", ["nnUNet_train_DDP", "3d_fullres", "nnUNetTrainerV2", TASK_ID, "0",
                                      "-gpus", "2", "--epochs", "1", "--iterations", "2", "--val_iterations", "1",
                                      "--dbs"])
    assert main_ddp() == 0
    fold = fold_dir(results)
    assert _layout(fold) == _layout(trained_3d.fold_dir)  # one result folder, as a single process writes it
    state = TrainingState.load(sidecar(fold / FINAL))
    assert state.world_size == 2 and state.config["distribute_batch"] and state.finished and state.epoch == 1
    assert not (fold / LATEST).exists()
    log_text = next(fold.glob("training_log_*.txt")).read_text()
    assert log_text.count("epoch 1/1: train loss") == 1 and "world 2" in log_text  # rank 0 alone writes
    check_validation(fold, tiny_task)  # every case, evaluated once
    output = capfd.readouterr().err
    assert output.count("validation 1/1:") == 2 and "validation 2/" not in output  # one case per rank
