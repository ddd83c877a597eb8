"""Two trained "models" whose validation errors are disjoint, so that their ensemble is perfect."""

from __future__ import annotations

import pytest

from tests.postprocess.synthetic import corrupt, one_hot, two_class_case, write_model

TASK = "Task001_X"
# voxels inside the class 1 block (model "2d" is wrong there) and inside the class 2 block ("3d_fullres")
ERRORS_2D = [(3, 4, 3), (4, 5, 4)]
ERRORS_3D = [(3, 4, 7), (4, 5, 7), (3, 6, 7)]


def make_models(results, configs=(("2d", ERRORS_2D), ("3d_fullres", ERRORS_3D)), n_cases=4):
    """Write one model per ``(configuration, error voxels)``; returns their folders."""
    gts = {f"case_{i}": two_class_case() for i in range(n_cases)}
    folders = {}
    for config, errors in configs:
        probs = {c: corrupt(one_hot(gt, 3), gt, errors, wrong=0) for c, gt in gts.items()}
        folders[config] = write_model(results, TASK, config, gts, probs, folds=2)
    return folders


@pytest.fixture
def results(tmp_path):
    """RESULTS_FOLDER with a "2d" model (2 errors per case) and a worse "3d_fullres" one (3 errors)."""
    make_models(tmp_path / "results")
    return tmp_path / "results"
