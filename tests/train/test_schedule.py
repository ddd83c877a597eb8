from __future__ import annotations

import pytest
import torch

from stages.errors import BadInputError
from stages.train.schedule import make_optimizer, poly_lr, set_lr, set_momentum


def test_poly_lr_values():
    assert poly_lr(0, 1000) == pytest.approx(0.01)
    assert poly_lr(500, 1000) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(999, 1000) == pytest.approx(0.01 * 0.001**0.9)
    assert poly_lr(1000, 1000) == 0.0
    assert poly_lr(50, 100, initial_lr=0.1, exponent=2.0) == pytest.approx(0.1 * 0.25)


def test_poly_lr_decreases_monotonically():
    lrs = [poly_lr(e, 1000) for e in range(1001)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize(("epoch", "max_epochs"), [(-1, 1000), (1001, 1000), (0, 0)])
def test_poly_lr_rejects_out_of_range(epoch, max_epochs):
    with pytest.raises(BadInputError):
        poly_lr(epoch, max_epochs)


def test_make_optimizer_defaults():
    params = [torch.nn.Parameter(torch.ones(3))]
    opt = make_optimizer(params)
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert group["lr"] == 0.01
    assert group["momentum"] == 0.99
    assert group["weight_decay"] == 3e-5
    assert group["nesterov"] is True


def test_optimizer_step_follows_nesterov_sgd():
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = make_optimizer([p], lr=0.1, weight_decay=0.0, momentum=0.5)
    p.grad = torch.tensor([2.0])
    opt.step()
    # first step: buffer = g = 2; nesterov update = g + momentum * buffer = 3
    assert p.item() == pytest.approx(1.0 - 0.1 * 3.0)


def test_set_lr_and_momentum():
    opt = make_optimizer([torch.nn.Parameter(torch.ones(2))])
    set_lr(opt, poly_lr(500, 1000))
    set_momentum(opt, 0.95)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**0.9)
    assert opt.param_groups[0]["momentum"] == 0.95
