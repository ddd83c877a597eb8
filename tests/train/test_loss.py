from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stages.errors import BadInputError
from stages.train.loss import (
    DCandCELoss,
    DeepSupervisionLoss,
    SoftDiceLoss,
    all_reduce_with_grad,
    batch_dice_for,
    deep_supervision_scales,
    deep_supervision_weights,
)

S, E = 1e-5, 1e-8  # smooth and the denominator epsilon of spec §6.4


def logits_from_probs(probs: list[list[list[float]]]) -> torch.Tensor:
    """(B, K, N) logits whose softmax over K is exactly ``probs``."""
    return torch.tensor(probs, dtype=torch.float64).log()


# two samples, background + one foreground class, two voxels each
PROBS = [
    [[0.2, 0.6], [0.8, 0.4]],  # sample 0: p(fg) = 0.8, 0.4
    [[0.7, 0.1], [0.3, 0.9]],  # sample 1: p(fg) = 0.3, 0.9
]
TARGET = torch.tensor([[[1, 0]], [[1, 1]]])  # (B, 1, N)


def test_sample_dice_hand_computed():
    # sample 0: tp 0.8, fp 0.4, fn 0.2; sample 1: tp 0.3 + 0.9, fp 0, fn 0.7 + 0.1
    dc0 = (2 * 0.8 + S) / (2 * 0.8 + 0.4 + 0.2 + S + E)
    dc1 = (2 * 1.2 + S) / (2 * 1.2 + 0.0 + 0.8 + S + E)
    loss = SoftDiceLoss(batch_dice=False)(logits_from_probs(PROBS), TARGET)
    assert loss.item() == pytest.approx(-(dc0 + dc1) / 2, abs=1e-6)


def test_batch_dice_hand_computed():
    dc = (2 * 2.0 + S) / (2 * 2.0 + 0.4 + 1.0 + S + E)
    loss = SoftDiceLoss(batch_dice=True)(logits_from_probs(PROBS), TARGET)
    assert loss.item() == pytest.approx(-dc, abs=1e-6)


def test_background_only_counted_with_do_bg():
    # background: sample 0 tp 0.6, fp 0.2, fn 0.4; sample 1 (no background voxel) tp 0, fp 0.8, fn 0
    bg0 = (2 * 0.6 + S) / (2 * 0.6 + 0.2 + 0.4 + S + E)
    bg1 = S / (0.8 + S + E)
    fg0 = (1.6 + S) / (2.2 + S + E)
    fg1 = (2.4 + S) / (3.2 + S + E)
    loss = SoftDiceLoss(batch_dice=False, do_bg=True)(logits_from_probs(PROBS), TARGET)
    assert loss.item() == pytest.approx(-(bg0 + bg1 + fg0 + fg1) / 4, abs=1e-6)


def test_absent_class_uses_the_exact_epsilons():
    # class 2 is neither in the target nor predicted (probability exactly 0): dc = smooth / (smooth + 1e-8)
    logits = torch.tensor([[[5.0, 0.0], [0.0, 5.0], [-1e4, -1e4]]])
    target = torch.tensor([[[0, 1]]])
    p = torch.softmax(logits, 1)[0]
    fg1 = (2 * p[1, 1] + S) / (2 * p[1, 1] + p[1, 0] + (1 - p[1, 1]) + S + E)
    loss = SoftDiceLoss(batch_dice=False)(logits, target)
    assert loss.item() == pytest.approx(-(fg1.item() + S / (S + E)) / 2, abs=1e-7)
    assert S / (S + E) < 0.9991  # the 1e-8 is visible at this precision


@pytest.mark.parametrize("batch_dice", [True, False])
def test_perfect_prediction(batch_dice):
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 4, 5, 6))
    logits = 50.0 * nn.functional.one_hot(target[:, 0], 3).permute(0, 4, 1, 2, 3).float()
    dice = SoftDiceLoss(batch_dice=batch_dice)(logits, target)
    total = DCandCELoss(batch_dice=batch_dice)(logits, target)
    assert dice.item() == pytest.approx(-1.0, abs=1e-6)
    assert total.item() == pytest.approx(-1.0, abs=1e-6)  # CE ~ 0


def test_dc_and_ce_is_the_sum_with_mean_cross_entropy():
    logits = logits_from_probs(PROBS)
    ce = -(math.log(0.8) + math.log(0.6) + math.log(0.3) + math.log(0.9)) / 4
    dice = SoftDiceLoss(batch_dice=False)(logits, TARGET).item()
    assert DCandCELoss(batch_dice=False)(logits, TARGET).item() == pytest.approx(ce + dice, abs=1e-6)
    weighted = DCandCELoss(batch_dice=False, weight_ce=2.0, weight_dice=0.5)(logits, TARGET).item()
    assert weighted == pytest.approx(2 * ce + 0.5 * dice, abs=1e-6)


def test_loss_accepts_int8_targets_and_gives_finite_gradients():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 6, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 6, 6), dtype=torch.int8)
    DCandCELoss(batch_dice=True)(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_target_must_be_a_label_map():
    logits = torch.randn(2, 3, 4, 4)
    with pytest.raises(BadInputError, match="target"):
        DCandCELoss(batch_dice=True)(logits, torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(BadInputError, match="target"):
        SoftDiceLoss(batch_dice=True)(logits, torch.zeros(2, 3, 4, 4, dtype=torch.long))


def test_batch_reduce_hook_gives_the_dice_of_the_global_batch():
    """Two 'ranks' hold halves of a batch; adding the other half's sums reproduces the full-batch Dice."""
    torch.manual_seed(2)
    logits = torch.randn(4, 3, 5, 5)
    target = torch.randint(0, 3, (4, 1, 5, 5))
    full = SoftDiceLoss(batch_dice=True)(logits, target)

    captured = {}
    SoftDiceLoss(batch_dice=True, batch_reduce=lambda s: captured.setdefault("b", s))(logits[2:], target[2:])
    half = SoftDiceLoss(batch_dice=True, batch_reduce=lambda s: s + captured["b"])(logits[:2], target[:2])
    assert captured["b"].shape == (3, 3)
    torch.testing.assert_close(half, full)


def test_all_reduce_with_grad_is_identity_without_distributed():
    t = torch.ones(3, 2, requires_grad=True)
    assert all_reduce_with_grad(t) is t


def test_deep_supervision_weights():
    assert deep_supervision_weights(5) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0])
    assert [round(w, 3) for w in deep_supervision_weights(5)] == [0.533, 0.267, 0.133, 0.067, 0.0]
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert deep_supervision_weights(1) == [1.0]
    with pytest.raises(BadInputError):
        deep_supervision_weights(0)


def test_deep_supervision_scales():
    scales = deep_supervision_scales([[1, 2, 2], [2, 2, 2], [2, 2, 2]])
    assert scales == [[1.0, 1.0, 1.0], [1.0, 0.5, 0.5], [0.5, 0.25, 0.25]]
    assert deep_supervision_scales([[2, 2]] * 2) == [[1.0, 1.0], [0.5, 0.5]]
    assert deep_supervision_scales([[2, 2, 2]]) == [[1.0, 1.0, 1.0]]


class RecordingLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, out, tgt):
        self.calls.append(tuple(out.shape))
        return out.sum() * 0 + float(out.shape[-1])


def test_deep_supervision_loss_weights_and_skips_zero_weight_outputs():
    inner = RecordingLoss()
    loss = DeepSupervisionLoss(inner, deep_supervision_weights(3))
    outputs = [torch.zeros(1, 2, 8), torch.zeros(1, 2, 4), torch.zeros(1, 2, 2)]
    targets = [torch.zeros(1, 1, 8), torch.zeros(1, 1, 4), torch.zeros(1, 1, 2)]
    value = loss(outputs, targets)
    assert value.item() == pytest.approx(2 / 3 * 8 + 1 / 3 * 4)
    assert inner.calls == [(1, 2, 8), (1, 2, 4)]  # the coarsest (weight 0) is never evaluated
    with pytest.raises(BadInputError, match="outputs"):
        loss(outputs[:2], targets[:2])


def test_deep_supervision_loss_with_dc_ce_matches_manual_sum():
    torch.manual_seed(3)
    outputs = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
    targets = [torch.randint(0, 3, (2, 1, 8, 8)), torch.randint(0, 3, (2, 1, 4, 4))]
    inner = DCandCELoss(batch_dice=False)
    loss = DeepSupervisionLoss(inner, [0.75, 0.25])(outputs, targets)
    manual = 0.75 * inner(outputs[0], targets[0]) + 0.25 * inner(outputs[1], targets[1])
    torch.testing.assert_close(loss, manual)


@pytest.mark.parametrize(
    ("configuration", "cascade", "expected"),
    [
        ("2d", False, True),
        ("2d", True, True),
        ("3d_fullres", False, False),
        ("3d_fullres", True, True),
        ("3d_cascade_fullres", True, True),
        ("3d_lowres", True, False),
    ],
)
def test_batch_dice_rule(configuration, cascade, expected):
    assert batch_dice_for(configuration, cascade) is expected


def test_batch_dice_rule_rejects_unknown_configuration():
    with pytest.raises(BadInputError, match="3d_full"):
        batch_dice_for("3d_full", True)


def test_half_precision_logits_are_evaluated_in_float32():
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 6, 6).to(torch.bfloat16)
    target = torch.randint(0, 3, (2, 1, 6, 6))
    loss = DCandCELoss(batch_dice=True)
    value = loss(logits, target)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, loss(logits.float(), target))
