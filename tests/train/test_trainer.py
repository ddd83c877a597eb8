"""Trainer selection by name, config overrides, and the epoch-100 momentum safeguard (spec §6.1)."""

from __future__ import annotations

import math

import pytest
import torch
from nnkube.nnunet_compat.train import _config, build_parser

from stages.errors import BadInputError
from stages.train.checkpoint import FINAL, LATEST, TrainingState, sidecar
from stages.train.run import load_plans_for, train_fold
from stages.train.trainer import TRAINERS, get_trainer_class, nnUNetTrainerV2
from tests.train.conftest import TASK, TASK_ID, run_compat_train

pytestmark = pytest.mark.usefixtures("single_thread_torch")


class MyTinyTrainer(nnUNetTrainerV2):  # noqa: N801 - selected by class name like nnU-Net's trainers
    """A user's variant: one short epoch."""

    default_config = {"max_epochs": 1, "iterations_per_epoch": 2, "val_iterations": 1, "num_workers": 0}


def _trainer(tiny_task, tmp_path, name="nnUNetTrainerV2", config=None) -> nnUNetTrainerV2:
    plans = load_plans_for(tiny_task.preprocessed_dir, "3d_fullres", "nnUNetPlansv2.1")
    return get_trainer_class(name)(plans, "3d_fullres", 0, tiny_task.preprocessed_dir, tmp_path / "fold_0",
                                   config=config, task=TASK)


def test_variant_sets_its_budget(tiny_task, tmp_path):
    trainer = _trainer(tiny_task, tmp_path, "nnUNetTrainerV2_5epochs")
    assert type(trainer).__name__ == "nnUNetTrainerV2_5epochs"
    assert trainer.config.max_epochs == 5
    assert trainer.config.iterations_per_epoch == 250 and trainer.config.initial_lr == 1e-2
    assert _trainer(tiny_task, tmp_path).config.max_epochs == 1000


def test_cli_epochs_and_iterations_override_the_variant(tiny_task, tmp_path):
    args = build_parser().parse_args(["3d_fullres", "nnUNetTrainerV2_5epochs", TASK_ID, "0", "--epochs", "7",
                                      "--iterations", "4", "--val_iterations", "2"])
    trainer = _trainer(tiny_task, tmp_path, args.network_trainer, _config(args))
    assert (trainer.config.max_epochs, trainer.config.iterations_per_epoch, trainer.config.val_iterations) == (
        7, 4, 2)
    unset = build_parser().parse_args(["3d_fullres", "nnUNetTrainerV2_5epochs", TASK_ID, "0"])
    assert _trainer(tiny_task, tmp_path, unset.network_trainer, _config(unset)).config.max_epochs == 5


def test_user_subclass_is_selectable_by_name(tiny_task, tmp_path):
    assert TRAINERS["MyTinyTrainer"] is MyTinyTrainer
    trainer_folder = tmp_path / "MyTinyTrainer__nnUNetPlansv2.1"
    assert train_fold(tiny_task.preprocessed_dir, trainer_folder, "3d_fullres", 0, "MyTinyTrainer",
                      run_validation=False, task=TASK) is None
    state = TrainingState.load(sidecar(trainer_folder / "fold_0" / FINAL))
    assert state.trainer == "MyTinyTrainer" and state.epoch == 1 and state.iterations_per_epoch == 2


def test_unknown_trainer_lists_the_known_ones(tiny_task, results_env):
    with pytest.raises(BadInputError) as err:
        get_trainer_class("nnUNetTrainerV3")
    message = str(err.value)
    assert "nnUNetTrainerV3" in message
    for name in ("nnUNetTrainerV2", "nnUNetTrainerV2_5epochs", "MyTinyTrainer"):
        assert name in message
    assert run_compat_train(["3d_fullres", "nnUNetTrainerV3", TASK_ID, "0"]) == 2


# ------------------------------------------------------------------ momentum safeguard (spec §6.1)
@pytest.fixture
def initialized(tiny_task, tmp_path) -> nnUNetTrainerV2:
    trainer = _trainer(tiny_task, tmp_path)
    trainer.initialize()
    return trainer


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}


def _momenta(trainer) -> set[float]:
    return {g["momentum"] for g in trainer.optimizer.param_groups}


def _end_epoch(trainer, epoch: int, dice: float) -> None:
    trainer.on_epoch_end(epoch, train_loss=0.5, val_loss=0.4, dice=dice, ema=0.0, is_best=False, lr=1e-3,
                         seconds=1.0)


def test_safeguard_at_epoch_100_with_zero_dice(initialized, tiny_task, tmp_path):
    before = _weights(initialized)
    assert _momenta(initialized) == {0.99}
    _end_epoch(initialized, 100, 0.0)
    assert _momenta(initialized) == {0.95}
    after = _weights(initialized)
    convs = [k for k, v in before.items() if k.endswith(".weight") and v.ndim == 5]
    assert convs and all(not torch.equal(before[k], after[k]) for k in convs)  # re-initialized
    std = after[convs[0]].std().item()  # He init: std = sqrt(2 / ((1 + a^2) * fan_in)), a = 1e-2
    fan_in = after[convs[0]][0].numel()
    assert std == pytest.approx(math.sqrt(2 / ((1 + 1e-4) * fan_in)), rel=0.25)
    assert "momentum lowered to 0.95" in initialized.log.path.read_text()
    # the lowered momentum survives a restart from the next checkpoint
    initialized.save(LATEST)
    resumed = _trainer(tiny_task, tmp_path)
    resumed.load(tmp_path / "fold_0" / LATEST, training=True)
    assert _momenta(resumed) == {0.95}


@pytest.mark.parametrize(("epoch", "dice"), [(99, 0.0), (101, 0.0), (100, 0.01), (100, float("nan"))])
def test_no_safeguard_otherwise(initialized, epoch, dice):
    before = _weights(initialized)
    assert initialized.maybe_apply_momentum_safeguard(epoch, dice) is False
    assert _momenta(initialized) == {0.99}
    assert all(torch.equal(before[k], v) for k, v in _weights(initialized).items())


def test_epoch_end_without_zero_dice_keeps_training_state(initialized):
    before = _weights(initialized)
    _end_epoch(initialized, 100, 0.3)
    assert _momenta(initialized) == {0.99}
    assert all(torch.equal(before[k], v) for k, v in _weights(initialized).items())
    assert initialized.state.epoch == 101 and initialized.state.val_eval_metrics == [0.3]
