"""The cascade through the stage entrypoints: 3d_lowres train stages feed a 3d_cascade_fullres train stage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages.__main__ import main
from stages.predict.cascade import PRED_NEXT_STAGE
from stages.train.checkpoint import FINAL, TrainingState, sidecar
from stages.train.data import prev_stage_file
from tests.predict.conftest import TASK

BUDGET = ["--epochs", "1", "--iterations", "2", "--val-iterations", "1", "--num-workers", "0"]


@pytest.fixture
def serial_export(monkeypatch):
    monkeypatch.setenv("NNKUBE_EXPORT_WORKERS", "0")


def _trainer_folder(results, configuration: str, trainer: str) -> str:
    return str(results / "nnUNet" / configuration / TASK / f"{trainer}__nnUNetPlansv2.1")


def test_lowres_stages_write_what_the_cascade_stage_reads(tiny_task, tmp_path, serial_export):
    results = tmp_path / "results"
    lowres = _trainer_folder(results, "3d_lowres", "nnUNetTrainerV2")
    common = ["--preprocessed", str(tiny_task.preprocessed), *BUDGET]
    cascade = ["train", *common, "--output", _trainer_folder(results, "3d_cascade_fullres",
                                                             "nnUNetTrainerV2CascadeFullRes"),
               "--configuration", "3d_cascade_fullres", "--trainer", "nnUNetTrainerV2CascadeFullRes", "--fold", "0",
               "--result-json", str(tmp_path / "cascade.json")]

    assert main(["train", *common, "--output", lowres, "--configuration", "3d_lowres", "--fold", "0"]) == 0
    written = sorted(p.name for p in (tmp_path / lowres / PRED_NEXT_STAGE).iterdir())
    assert written == [prev_stage_file(c) for c in tiny_task.folds[0][1]]  # fold 0's validation cases
    assert main(cascade) == 2  # fold 1's cases have no previous-stage segmentation yet: bad input, no retry

    assert main(["train", *common, "--output", lowres, "--configuration", "3d_lowres", "--fold", "1"]) == 0
    written = sorted(p.name for p in (tmp_path / lowres / PRED_NEXT_STAGE).iterdir())
    assert written == [prev_stage_file(c) for c in tiny_task.case_ids]
    assert main(cascade) == 0
    fold = tmp_path / cascade[cascade.index("--output") + 1] / "fold_0"
    state = TrainingState.load(sidecar(fold / FINAL))
    assert state.num_input_channels == 1 + 2 and state.configuration == "3d_cascade_fullres" and state.finished
    result = json.loads((tmp_path / "cascade.json").read_text())
    assert result["status"] == "done" and result["extra"]["summary"].endswith("validation_raw/summary.json")
    summary = json.loads((fold / "validation_raw" / "summary.json").read_text())
    cases = sorted(entry["test"].rsplit("/", 1)[1] for entry in summary["results"]["all"])
    assert cases == [f"{c}.nii.gz" for c in tiny_task.folds[0][1]]
    assert np.isfinite(summary["results"]["mean"]["mean"]["Dice"])
