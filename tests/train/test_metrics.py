from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from stages.errors import BadInputError
from stages.train.loss import SoftDiceLoss, all_reduce_with_grad
from stages.train.metrics import (
    EmaTracker,
    OnlineEvaluator,
    all_reduce_sum,
    dice_from_counts,
    nan_mean,
)


def logits_for(pred: list[int], num_classes: int = 3) -> torch.Tensor:
    """(1, K, N) logits whose argmax is ``pred``."""
    return nn.functional.one_hot(torch.tensor([pred]), num_classes).permute(0, 2, 1).float() * 3.0


def labels(values: list[int]) -> torch.Tensor:
    return torch.tensor([[values]], dtype=torch.int8)  # (1, 1, N)


def test_counts_of_one_batch():
    ev = OnlineEvaluator(3)
    ev.update(logits_for([0, 1, 1, 2, 2, 0]), labels([0, 1, 2, 2, 0, 1]))
    res = ev.finish()
    # class 1: predicted at 1, 2; true at 1, 5.  class 2: predicted at 3, 4; true at 2, 3
    assert (res.tp, res.fp, res.fn) == ([1, 1], [1, 1], [1, 1])
    assert res.per_class_dice == pytest.approx([0.5, 0.5])
    assert res.mean_fg_dice == pytest.approx(0.5)


def test_counts_are_summed_over_batches_before_the_dice():
    ev = OnlineEvaluator(3)
    ev.update(logits_for([1, 1, 0, 0]), labels([1, 0, 0, 0]))  # class 1: tp 1 fp 1
    ev.update(logits_for([1, 2, 2, 0]), labels([1, 1, 2, 2]))  # class 1: tp 1 fn 1; class 2: tp 1 fp 1 fn 1
    res = ev.finish()
    assert res.tp == [2, 1] and res.fp == [1, 1] and res.fn == [1, 1]
    # global Dice of the summed counts (2*2/(4+2)), not the mean of per-batch Dice values
    assert res.per_class_dice == pytest.approx([4 / 6, 2 / 4])
    assert res.mean_fg_dice == pytest.approx((4 / 6 + 2 / 4) / 2)


def test_absent_class_is_dropped_from_the_mean():
    ev = OnlineEvaluator(3)
    ev.update(logits_for([1, 1, 0]), labels([1, 0, 0]))
    res = ev.finish()
    assert res.per_class_dice[0] == pytest.approx(2 / 3)
    assert math.isnan(res.per_class_dice[1])
    assert res.mean_fg_dice == pytest.approx(2 / 3)


def test_no_foreground_at_all_gives_nan():
    ev = OnlineEvaluator(2)
    ev.update(logits_for([0, 0], 2), labels([0, 0]))
    assert math.isnan(ev.finish().mean_fg_dice)


def test_deep_supervision_tuple_uses_full_resolution_and_negative_target_is_background():
    ev = OnlineEvaluator(2)
    full = logits_for([1, 1, 0, 1], 2)
    coarse = logits_for([0], 2)
    ev.update((full, coarse), labels([1, -1, 0, 1]))
    res = ev.finish()
    assert (res.tp, res.fp, res.fn) == ([2], [1], [0])


def test_3d_batches_and_finish_resets():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6)
    target = torch.randint(0, 3, (2, 1, 4, 5, 6))
    ev = OnlineEvaluator(3)
    ev.update(logits, target)
    res = ev.finish()
    pred = logits.argmax(1)
    for c in (1, 2):
        p, t = pred == c, target[:, 0] == c
        assert res.tp[c - 1] == int((p & t).sum())
        assert res.fp[c - 1] == int((p & ~t).sum())
        assert res.fn[c - 1] == int((~p & t).sum())
    empty = ev.finish()
    assert empty.tp == [0, 0] and math.isnan(empty.mean_fg_dice)


def test_shape_mismatch_is_rejected():
    ev = OnlineEvaluator(3)
    with pytest.raises(BadInputError, match="channels"):
        ev.update(torch.zeros(1, 2, 4), labels([0, 0, 0, 0]))
    with pytest.raises(BadInputError, match="does not match"):
        ev.update(torch.zeros(1, 3, 4), labels([0, 0, 0]))
    with pytest.raises(BadInputError):
        OnlineEvaluator(1)


def test_evaluator_state_round_trips_through_json():
    ev = OnlineEvaluator(3)
    ev.update(logits_for([0, 1, 1, 2, 2, 0]), labels([0, 1, 2, 2, 0, 1]))
    state = json.loads(json.dumps(ev.state_dict()))
    restored = OnlineEvaluator(3)
    restored.load_state_dict(state)
    restored.update(logits_for([1]), labels([1]))
    assert restored.finish().tp == [2, 1]
    with pytest.raises(BadInputError, match="classes"):
        OnlineEvaluator(4).load_state_dict(state)


def test_dice_helpers():
    assert dice_from_counts([1, 0], [1, 0], [0, 0])[0] == pytest.approx(2 / 3)
    assert math.isnan(dice_from_counts([1, 0], [1, 0], [0, 0])[1])
    assert nan_mean([math.nan, 0.5, 1.0]) == pytest.approx(0.75)
    assert math.isnan(nan_mean([math.nan]))


def test_ema_tracker_sequence():
    tracker = EmaTracker()
    assert tracker.update(0.5, 0) is True  # first epoch: the average is the value itself
    assert tracker.ema == pytest.approx(0.5)
    assert tracker.update(0.6, 1) is True
    assert tracker.ema == pytest.approx(0.9 * 0.5 + 0.1 * 0.6)
    assert tracker.update(0.4, 2) is False
    ema2 = 0.9 * (0.9 * 0.5 + 0.1 * 0.6) + 0.1 * 0.4
    assert tracker.ema == pytest.approx(ema2)
    assert tracker.update(math.nan, 3) is False  # no foreground in the epoch: average unchanged
    assert tracker.ema == pytest.approx(ema2)
    assert tracker.update(0.9, 4) is True
    assert tracker.ema == pytest.approx(0.9 * ema2 + 0.1 * 0.9)
    assert tracker.best == pytest.approx(tracker.ema)
    assert tracker.best_epoch == 4

    state = json.loads(json.dumps(tracker.state_dict(), allow_nan=False))
    assert state["history"][3] is None
    again = EmaTracker.from_state_dict(state)
    assert again.ema == pytest.approx(tracker.ema) and again.best_epoch == 4
    assert math.isnan(again.history[3]) and again.history[4] == 0.9
    assert again.update(0.0, 5) is False and again.best == pytest.approx(tracker.best)


def test_all_reduce_sum_without_distributed_is_identity():
    t = torch.tensor([[1, 2], [3, 4], [5, 6]])
    assert all_reduce_sum(t) is t
    assert t.tolist() == [[1, 2], [3, 4], [5, 6]]


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ev = OnlineEvaluator(3)
        if rank == 0:
            ev.update(logits_for([0, 1, 1, 2]), labels([0, 1, 0, 2]))
        else:
            ev.update(logits_for([2, 2, 1, 0]), labels([2, 1, 1, 1]))
        res = ev.finish()

        torch.manual_seed(0)
        logits = torch.randn(4, 3, 5, 5)
        target = torch.randint(0, 3, (4, 1, 5, 5))
        mine = logits[2 * rank : 2 * rank + 2].clone().requires_grad_(True)
        loss = SoftDiceLoss(batch_dice=True, batch_reduce=all_reduce_with_grad)(mine, target[2 * rank : 2 * rank + 2])
        loss.backward()
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump({"tp": res.tp, "fp": res.fp, "fn": res.fn, "loss": loss.item(), "grad": mine.grad.tolist()}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns two processes (about 5 s idle, over 20 s on a busy machine)
def test_ddp_hooks_sum_across_two_ranks(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # rank 0: class 1 tp 1 fp 1, class 2 tp 1; rank 1: class 1 tp 1 fp 0 fn 2, class 2 tp 1 fp 1
    for res in results:
        assert (res["tp"], res["fp"], res["fn"]) == ([2, 2], [1, 1], [2, 0])

    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5, 5).requires_grad_(True)
    target = torch.randint(0, 3, (4, 1, 5, 5))
    full = SoftDiceLoss(batch_dice=True)(logits, target)
    full.backward()
    for rank, res in enumerate(results):
        assert res["loss"] == pytest.approx(full.item(), abs=1e-6)
        # the backward of the all-reduce sums the identical upstream gradients of both ranks; DDP's averaging of
        # parameter gradients divides by the world size again
        expected = 2 * logits.grad[2 * rank : 2 * rank + 2]
        torch.testing.assert_close(torch.tensor(res["grad"]), expected)
