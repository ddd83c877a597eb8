"""A tiny task with trained models for the prediction tests (shared by the whole session).

Four synthetic 20^3 cases, planned with a 3D planner whose patches are 8^3 (one pooling step): the median image
then holds more than four patches, so the plans have a 3d_lowres stage (13^3 at 1.58 mm) before 3d_fullres and
the cascade can be exercised on CPU in seconds. The 2D plans are nnU-Net's own (20x20 patches).
``splits_final.json`` has two folds of two cases. Trainings are one epoch of two iterations, batch 2,
augmentation in-process (the networks are barely trained: the tests check mechanics, not accuracy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from stages.plan.models import Plans, plans_filename
from stages.plan.planner3d import ExperimentPlanner3D_v21
from stages.train.splits import SPLITS_FILENAME, Split, Splits
from tests.factories import SyntheticCase, make_case, make_cases, write_nnunet_task

TASK = "Task500_Tiny"
TINY_TRAINING = {"max_epochs": 1, "iterations_per_epoch": 2, "val_iterations": 1, "num_workers": 0}


class TinyPredictPlanner3D(ExperimentPlanner3D_v21):
    """8^3 patches: 20^3 images then get a 3d_lowres stage."""

    initial_patch_edge = 8


@dataclass
class TinyTask:
    """Folders of the tiny task in the nnU-Net v1 layout."""

    root: Path
    raw: Path
    preprocessed: Path
    results: Path
    plans: Plans
    case_ids: list[str]
    folds: list[tuple[list[str], list[str]]]

    def trainer_folder(self, configuration: str, trainer: str = "nnUNetTrainerV2") -> Path:
        """``<results>/nnUNet/<configuration>/<task>/<trainer>__nnUNetPlansv2.1``."""
        from stages.paths import trainer_dir

        return trainer_dir(self.results, configuration, TASK, trainer)


def write_input_folder(folder: Path, cases: list[SyntheticCase]) -> Path:
    """Write ``<case>_XXXX.nii.gz`` images of ``cases`` (inference layout) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        for m, arr in enumerate(case.images):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(tuple(float(s) for s in reversed(case.spacing)))
            img.SetOrigin(case.origin)
            img.SetDirection(case.direction)
            sitk.WriteImage(img, str(folder / f"{case.case_id}_{m:04d}.nii.gz"))
    return folder


def odd_geometry_case(case_id: str, seed: int = 7) -> SyntheticCase:
    """A test case unlike the training data: anisotropic spacing, rotated direction, offset origin, zero border."""
    case = make_case(case_id, shape=(17, 23, 21), spacing=(1.6, 0.9, 1.1), seed=seed, zero_border=2)
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    case.direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0)
    case.origin = (-7.5, 12.25, 3.0)
    return case


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> TinyTask:
    """The tiny task planned and preprocessed (3d_lowres + 3d_fullres), with a two-fold split."""
    from stages.preprocess.pipeline import plan_and_preprocess

    root = tmp_path_factory.mktemp("tiny_task")
    cases = make_cases(4, shape=(20, 20, 20))
    raw = write_nnunet_task(root / "raw" / TASK, cases)
    pre = root / "preprocessed" / TASK
    result = plan_and_preprocess(raw, pre, TinyPredictPlanner3D.__name__, "ExperimentPlanner2D_v21",
                                 num_processes_lowres=1, num_processes_fullres=1)
    plans = result.plans_3d
    assert plans is not None and plans.has_cascade, "the tiny task must plan a 3d_lowres stage"
    for p in (plans, result.plans_2d):
        for stage in p.plans_per_stage.values():
            stage.batch_size = 2
        p.save(pre / plans_filename(p.dimension))
    ids = sorted(c.case_id for c in cases)
    folds = [(ids[2:], ids[:2]), (ids[:2], ids[2:])]
    Splits(splits=[Split(train=t, val=v) for t, v in folds]).save(pre / SPLITS_FILENAME)
    return TinyTask(root, raw, pre, root / "results", plans, ids, folds)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny networks: one intra-op thread is fastest and keeps a busy machine responsive."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def train(task: TinyTask, configuration: str, fold: int, trainer: str = "nnUNetTrainerV2",
          run_validation: bool = True, hook=None):
    """Train one tiny fold with :func:`stages.train.run.train_fold`; returns ``(summary, trainer object)``."""
    from stages.train.run import train_fold

    seen = []

    def capture(t):
        seen.append(t)
        if hook is not None:
            hook(t)

    summary = train_fold(task.preprocessed, task.trainer_folder(configuration, trainer), configuration, fold,
                         trainer_name=trainer, config=dict(TINY_TRAINING), run_validation=run_validation,
                         task=TASK, trainer_hook=capture)
    return summary, seen[0]


@dataclass
class LowresModel:
    """The 3d_lowres trainer folder (folds 0 and 1) and what its training left behind."""

    folder: Path
    fold0_trainer: object
    next_stage_fold0: list[Path]


@pytest.fixture(scope="session")
def lowres_model(tiny_task) -> LowresModel:
    """3d_lowres folds 0 (validated with TTA) and 1 (not validated); pred_next_stage of both folds.

    Fold 0's next-stage predictions come from the in-memory trainer (the training hook), fold 1's from the
    trainer folder's checkpoint.
    """
    from stages.predict.cascade import after_lowres_validation, predict_next_stage

    _, trainer0 = train(tiny_task, "3d_lowres", 0)
    written0 = after_lowres_validation(trainer0)
    train(tiny_task, "3d_lowres", 1, run_validation=False)
    folder = tiny_task.trainer_folder("3d_lowres")
    fullres = tiny_task.preprocessed / tiny_task.plans.stage_folder(1)
    predict_next_stage(folder, 1, fullres, use_mirroring=False)
    return LowresModel(folder, trainer0, written0)


@pytest.fixture(scope="session")
def model_2d(tiny_task) -> Path:
    """The 2d configuration, fold 0 (validated with TTA)."""
    train(tiny_task, "2d", 0)
    return tiny_task.trainer_folder("2d")


@pytest.fixture(scope="session")
def cascade_model(tiny_task, lowres_model) -> Path:
    """3d_cascade_fullres fold 0 trained on the lowres stage's out-of-fold predictions (validated without TTA)."""
    import stages.train.cascade  # noqa: F401  (registers nnUNetTrainerV2CascadeFullRes)
    from stages.train.validation import validate_fold

    _, trainer = train(tiny_task, "3d_cascade_fullres", 0, trainer="nnUNetTrainerV2CascadeFullRes",
                       run_validation=False)
    validate_fold(trainer, use_mirroring=False)
    return tiny_task.trainer_folder("3d_cascade_fullres", "nnUNetTrainerV2CascadeFullRes")


def read_labels(path: Path) -> tuple[np.ndarray, sitk.Image]:
    """Array and image of a label file."""
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img
