"""Shared fixtures: the real dataset's path (skip when absent) and synthetic data factories."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.s3server"]

_DEFAULT_HIPPO = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "Task04_Hippocampus"


def hippocampus_path() -> Path | None:
    """Path of MSD Task04_Hippocampus from ``NNKUBE_HIPPOCAMPUS`` or ../shared, or None if absent."""
    p = Path(os.environ.get("NNKUBE_HIPPOCAMPUS", str(_DEFAULT_HIPPO)))
    return p if (p / "dataset.json").is_file() else None


@pytest.fixture(scope="session")
def hippocampus() -> Path:
    """The real Hippocampus task folder; skips the test where it is absent."""
    p = hippocampus_path()
    if p is None:
        pytest.skip("Task04_Hippocampus not found (set NNKUBE_HIPPOCAMPUS)")
    return p


@pytest.fixture
def restore_logging():
    """Undo what ``python -m stages`` (setup_logging, bind_context) does to the process's logging."""
    from stages import log as stages_log

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stages_log._CONTEXT.clear()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    stages_log._CONTEXT.clear()


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests without CUDA; ``cluster`` tests always need an explicit opt-in."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="no CUDA device"))
        if "cluster" in item.keywords and not os.environ.get("NNKUBE_CLUSTER_TESTS"):
            item.add_marker(pytest.mark.skip(reason="needs a cluster (set NNKUBE_CLUSTER_TESTS=1)"))
