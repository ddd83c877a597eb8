"""Training progress for people and for Argo: the log file, progress.png and ``$ARGO_PROGRESS_FILE``."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from stages.fsutil import atomic_path
from stages.train.checkpoint import TrainingState

log = logging.getLogger(__name__)


def plot_progress(state: TrainingState, path: str | os.PathLike) -> None:
    """Write progress.png: losses and pseudo Dice (raw and EMA), epoch time and learning rate panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = list(range(len(state.train_losses)))
    fig, axes = plt.subplots(3, 1, figsize=(12, 16))
    ax = axes[0]
    ax.plot(epochs, state.train_losses, color="b", label="train loss")
    ax.plot(epochs[: len(state.val_losses)], state.val_losses, color="r", label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs[: len(state.val_eval_metrics)], state.val_eval_metrics, "g--", label="pseudo Dice")
    ax2.plot(epochs[: len(state.ema_metrics)], state.ema_metrics, "g-", label="pseudo Dice (EMA)")
    ax2.set_ylabel("evaluation metric")
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")
    axes[1].plot(epochs[: len(state.epoch_seconds)], state.epoch_seconds, color="b")
    axes[1].set_ylabel("epoch duration [s]")
    axes[2].plot(epochs[: len(state.learning_rates)], state.learning_rates, color="b")
    axes[2].set_ylabel("learning rate")
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)


def report_argo_progress(done: int, total: int) -> None:
    """Write ``done/total`` to ``$ARGO_PROGRESS_FILE`` when Argo set it (the UI shows it per node)."""
    target = os.environ.get("ARGO_PROGRESS_FILE")
    if not target:
        return
    try:
        Path(target).write_text(f"{done}/{total}\n")
    except OSError as exc:  # progress is best effort; never fail training for it
        log.warning("cannot write ARGO_PROGRESS_FILE %s: %s", target, exc)


class TrainingLog:
    """Appends timestamped lines to ``training_log_<date>.txt`` in the fold folder and to the logger."""

    def __init__(self, fold_dir: str | os.PathLike, enabled: bool = True):
        self.enabled = enabled
        stamp = time.strftime("%Y_%-m_%-d_%H_%M_%S")
        self.path = Path(fold_dir) / f"training_log_{stamp}.txt"

    def __call__(self, msg: str, *args: object) -> None:
        """Log ``msg % args`` to the logger and the file."""
        text = msg % args if args else msg
        log.info("%s", text)
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {text}\n")
