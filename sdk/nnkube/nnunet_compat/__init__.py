"""The classic nnU-Net v1 commands (``nnUNet_train`` ...), with their flags and folder layout.

Each console script resolves its implementation lazily so that ``pip install nnkube`` (no runtime extra)
still installs, and a missing runtime gives one clear line instead of an ImportError traceback.
"""

from __future__ import annotations

import importlib
import sys


def _run(module: str, func: str = "main") -> None:
    try:
        mod = importlib.import_module(f"nnkube.nnunet_compat.{module}")
    except ImportError as exc:  # the runtime extra (torch, SimpleITK ...) is not installed
        sys.stderr.write(f"this command needs the nnkube runtime: pip install 'nnkube[runtime]' ({exc})\n")
        sys.exit(2)
    sys.exit(getattr(mod, func)())


def convert_decathlon_task() -> None:
    """``nnUNet_convert_decathlon_task``."""
    _run("convert")


def plan_and_preprocess() -> None:
    """``nnUNet_plan_and_preprocess``."""
    _run("plan_and_preprocess")


def train() -> None:
    """``nnUNet_train``."""
    _run("train")


def train_ddp() -> None:
    """``nnUNet_train_DDP``."""
    _run("train", "main_ddp")


def train_dp() -> None:
    """``nnUNet_train_DP`` (mapped onto DDP)."""
    _run("train", "main_dp")


def predict() -> None:
    """``nnUNet_predict``."""
    _run("predict")


def evaluate_folder() -> None:
    """``nnUNet_evaluate_folder``."""
    _run("evaluate")


def determine_postprocessing() -> None:
    """``nnUNet_determine_postprocessing``."""
    _run("postprocess")


def find_best_configuration() -> None:
    """``nnUNet_find_best_configuration``."""
    _run("find_best")


def ensemble() -> None:
    """``nnUNet_ensemble``."""
    _run("ensemble")
