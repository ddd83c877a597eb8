"""``python -m stages train|validate`` on S3 with a stand-in trainer: resume after pre-emption, skip, rerun.

The stand-in mimics what the stage relies on in nnUNetTrainerV2: real checkpoints (tensors + JSON sidecar)
written through ``save`` and announced with ``on_checkpoint_saved``, ``model_latest`` every ``save_every``
epochs, a SIGTERM handler that saves ``model_latest`` and raises TransientError, progress.png and a training
log in the fold folder, and ``model_latest`` removed after ``model_final_checkpoint``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from stages import log as stages_log
from stages import storage
from stages.__main__ import main
from stages.errors import TransientError
from stages.stagekit import StageResult
from stages.train import cli as train_cli
from tests.preprocess.conftest import make_plans
from tests.stagekit.conftest import s3_calls  # noqa: F401  (fixture)

pytestmark = pytest.mark.s3
SUMMARY = {"results": {"mean": {"0": {"Dice": 0.99}, "1": {"Dice": 0.8}, "2": {"Dice": 0.6},
                                "mean": {"Dice": 0.7}}}}


class FakeTrainer:
    def __init__(self, fold_dir: Path, config: dict, preempt_at: int | None) -> None:
        import torch

        from stages.train.checkpoint import TrainingState

        self.output_dir = fold_dir
        fold_dir.mkdir(parents=True, exist_ok=True)
        self.config = SimpleNamespace(max_epochs=config.get("max_epochs") or 1000,
                                      save_every=config.get("save_every") or 50)
        self.network = torch.nn.Linear(2, 2)
        self.state = TrainingState(trainer="Fake", configuration="3d_fullres", fold="0", num_input_channels=1,
                                   num_classes=3, max_epochs=self.config.max_epochs, iterations_per_epoch=1)
        self.preempt_at = preempt_at
        self._stop = False

    def on_checkpoint_saved(self, path: Path) -> None:
        """Replaced by the stage."""

    def save(self, name: str) -> None:
        from stages.train.checkpoint import save_checkpoint

        self.on_checkpoint_saved(save_checkpoint(self.output_dir / name, self.network, self.state))

    def on_epoch_end(self, epoch: int) -> None:
        self.state.epoch = epoch + 1
        self.state.train_losses.append(1.0 / (epoch + 1))
        (self.output_dir / "progress.png").write_bytes(f"png after epoch {epoch + 1}".encode())
        with open(self.output_dir / "training_log_fake.txt", "a") as fh:
            fh.write(f"epoch {epoch + 1}\n")
        if self.state.epoch % self.config.save_every == 0 and self.state.epoch < self.config.max_epochs:
            self.save("model_latest.model")

    def run_training(self, resume: bool) -> int:
        from stages.train.checkpoint import find_resume_checkpoint, load_checkpoint

        found = find_resume_checkpoint(self.output_dir) if resume else None
        if found is not None:
            self.state = load_checkpoint(found)[1]
        started = self.state.epoch
        previous = signal.signal(signal.SIGTERM, lambda *a: setattr(self, "_stop", True))
        try:
            while self.state.epoch < self.config.max_epochs:
                self.on_epoch_end(self.state.epoch)
                if self.state.epoch == self.preempt_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                if self._stop:
                    self.save("model_latest.model")
                    raise TransientError(f"pre-empted after epoch {self.state.epoch}")
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.save("model_final_checkpoint.model")
        for name in ("model_latest.model", "model_latest.model.json"):
            (self.output_dir / name).unlink(missing_ok=True)
        return started


@pytest.fixture
def fake_training(monkeypatch):
    """Install the stand-in as train_fold; returns its call log and a knob to pre-empt at an epoch."""
    calls: list[dict] = []
    knobs = {"preempt_at": None}

    def train_fold(preprocessed_dir, trainer_folder, configuration, fold, trainer_name="nnUNetTrainerV2",
                   plans_identifier="nnUNetPlansv2.1", config=None, resume=False, validation_only=False,
                   save_npz=False, task="", trainer_hook=None, **_):
        pre = Path(preprocessed_dir)
        staged = sorted(p.relative_to(pre).as_posix() for p in pre.rglob("*") if p.is_file())
        trainer = FakeTrainer(Path(trainer_folder) / f"fold_{fold}", config or {}, knobs["preempt_at"])
        if trainer_hook is not None:
            trainer_hook(trainer)
        (Path(trainer_folder) / "plans.json").write_text((pre / "nnUNetPlansv2.1_plans_3D.json").read_text())
        prev = getattr(trainer, "prev_stage_folder", None)  # set by the stage's hook for the cascade
        call = {"staged": staged, "validation_only": validation_only, "npz": save_npz,
                "prev_stage": sorted(p.name for p in Path(prev).iterdir()) if prev else None}
        calls.append(call)
        if validation_only:
            assert (trainer.output_dir / "model_final_checkpoint.model").is_file()
        else:
            call["started_at"] = trainer.run_training(resume)
        summary_file = trainer.output_dir / "validation_raw" / "summary.json"
        summary_file.parent.mkdir(parents=True, exist_ok=True)
        summary_file.write_text(json.dumps(SUMMARY))
        return SUMMARY

    monkeypatch.setattr(train_cli, "_train_fold_fn", lambda: train_fold)
    yield calls, knobs
    logging.getLogger().handlers.clear()
    stages_log._CONTEXT.clear()


def _preprocessed(prefix: str, cascade: bool = False) -> None:
    plans = make_plans(extra_stages=[(2.0, 2.0, 2.0)] if cascade else ())
    storage.write_text(f"{prefix}/nnUNetPlansv2.1_plans_3D.json", plans.to_json())
    for case in ("case_000", "case_001"):
        for ext in (".npy", "_seg.npy", ".json"):
            storage.write_text(f"{prefix}/{plans.stage_folder(plans.num_stages - 1)}/{case}{ext}", f"{case}{ext}")
        storage.write_text(f"{prefix}/gt_segmentations/{case}.nii.gz", case)
    storage.write_text(f"{prefix}/nnUNetData_plans_v2.1_stage9/other.npy", "not needed by this configuration")


def _sidecar_epoch(uri: str) -> int:
    return json.loads(storage.read_text(uri))["epoch"]


def test_train_resumes_after_preemption_then_skips(s3_bucket, s3_calls, fake_training, tmp_path,  # noqa: F811
                                                   monkeypatch, capsys):
    calls, knobs = fake_training
    pre, out = f"{s3_bucket}/pre/Task500_Synth", f"{s3_bucket}/results/3d_fullres/Task500_Synth/Fake__plans"
    _preprocessed(pre)
    progress, artifacts = tmp_path / "argo-progress", tmp_path / "artifacts"
    monkeypatch.setenv("ARGO_PROGRESS_FILE", str(progress))
    args = ["train", "--preprocessed", pre, "--output", out, "--configuration", "3d_fullres", "--fold", "0",
            "--epochs", "6", "--save-every", "2", "--upload-every", "0", "--artifacts-dir", str(artifacts),
            "--result-json", str(tmp_path / "r.json")]
    fold = f"{out}/fold_0"

    knobs["preempt_at"] = 3  # SIGTERM during epoch 4: the trainer saves model_latest at epoch 3
    assert main(args) == 75
    assert "nnUNetData_plans_v2.1_stage9/other.npy" not in calls[0]["staged"]
    assert "nnUNetData_plans_v2.1_stage0/case_001_seg.npy" in calls[0]["staged"]
    assert "gt_segmentations/case_000.nii.gz" in calls[0]["staged"]
    assert _sidecar_epoch(f"{fold}/model_latest.model.json") == 3
    assert storage.exists(f"{fold}/model_latest.model")
    assert storage.read_text(f"{fold}/progress.png") == "png after epoch 3"
    assert not storage.exists(f"{fold}/_NNKUBE_COMPLETE.json")
    assert progress.read_text().strip() == "3/6"
    assert (artifacts / "progress.png").read_bytes() == b"png after epoch 3"

    knobs["preempt_at"] = None  # the Argo retry: a fresh pod continues from epoch 3
    assert main(args) == 0
    assert calls[1]["started_at"] == 3
    assert _sidecar_epoch(f"{fold}/model_final_checkpoint.model.json") == 6
    assert not storage.exists(f"{fold}/model_latest.model") and not storage.exists(f"{fold}/model_latest.model.json")
    assert storage.read_text(f"{fold}/training_log_fake.txt").splitlines()[-1] == "epoch 6"
    result = StageResult.load(tmp_path / "r.json")
    assert result.status == "done" and result.extra["dice"] == pytest.approx(0.7)
    assert result.extra["summary"] == f"{fold}/validation_raw/summary.json"
    assert f"{out}/plans.json" in result.outputs and storage.exists(f"{fold}/_NNKUBE_COMPLETE.json")
    assert json.loads((artifacts / "summary.json").read_text()) == SUMMARY
    assert progress.read_text().strip() == "6/6"

    # a third run finds the marker: nothing is trained or written but the result; JSON logs carry the context
    monkeypatch.setenv("NNKUBE_LOG_FORMAT", "json")
    (artifacts / "summary.json").unlink()
    capsys.readouterr()
    s3_calls.clear()
    assert main(args) == 0
    assert len(calls) == 2 and StageResult.load(tmp_path / "r.json").status == "skipped"
    assert not [c for c in s3_calls if c in ("PutObject", "DeleteObject", "CopyObject")]
    assert (artifacts / "summary.json").is_file()  # fetched for the Argo artifact
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    skipped = [r for r in records if r["msg"].startswith("skipped: outputs up to date")]
    assert len(skipped) == 1
    assert {k: skipped[0][k] for k in ("stage", "dataset", "configuration", "fold")} == {
        "stage": "train", "dataset": "Task500_Synth", "configuration": "3d_fullres", "fold": "0"}


def test_changed_data_discards_checkpoints_of_the_old_run(s3_bucket, fake_training, tmp_path):
    calls, knobs = fake_training
    pre, out = f"{s3_bucket}/pre/Task500_Synth", f"{s3_bucket}/results/trainer"
    _preprocessed(pre)
    args = ["train", "--preprocessed", pre, "--output", out, "--configuration", "3d_fullres", "--fold", "0",
            "--epochs", "4", "--save-every", "2"]
    knobs["preempt_at"] = 2
    assert main(args) == 75
    storage.write_text(f"{pre}/gt_segmentations/case_001.nii.gz", "relabelled")
    knobs["preempt_at"] = None
    assert main(args) == 0
    assert calls[1]["started_at"] == 0  # not resumed from the checkpoint of the other data
    assert _sidecar_epoch(f"{out}/fold_0/model_final_checkpoint.model.json") == 4


def test_validate_reruns_validation_from_the_final_checkpoint(s3_bucket, fake_training, tmp_path):
    calls, _ = fake_training
    pre, out = f"{s3_bucket}/pre/Task500_Synth", f"{s3_bucket}/results/trainer"
    _preprocessed(pre)
    common = ["--preprocessed", pre, "--output", out, "--configuration", "3d_fullres", "--fold", "0"]
    assert main(["validate", *common]) == 2  # no trained model yet: bad input, no retry
    assert main(["train", *common, "--epochs", "2", "--save-every", "1"]) == 0
    storage.delete(f"{out}/fold_0/validation_raw/summary.json")
    validate = ["validate", *common, "--npz", "--result-json", str(tmp_path / "v.json")]
    assert main(validate) == 0
    assert calls[-1]["validation_only"] and calls[-1]["npz"]
    assert storage.exists(f"{out}/fold_0/validation_raw/summary.json")
    result = StageResult.load(tmp_path / "v.json")
    assert result.extra["dice"] == pytest.approx(0.7) and result.marker.endswith("_NNKUBE_COMPLETE.validate.json")
    assert main(validate) == 0 and len(calls) == 2
    assert StageResult.load(tmp_path / "v.json").status == "skipped"
    # the training marker still holds: validation rewrote only outputs that train checks for existence
    assert main(["train", *common, "--epochs", "2", "--save-every", "1"]) == 0 and len(calls) == 2


def test_bad_flags_exit_2(s3_bucket, fake_training, tmp_path):
    pre = f"{s3_bucket}/pre/Task500_Synth"
    _preprocessed(pre)
    base = ["train", "--preprocessed", pre, "--output", f"{s3_bucket}/results/t", "--configuration"]
    assert main([*base, "3d_fullres", "--fold", "first"]) == 2
    assert main([*base, "4d", "--fold", "0"]) == 2
    assert main([*base, "3d_lowres", "--fold", "0"]) == 2  # the plans have no cascade
    assert main([*base, "3d_fullres", "--fold", "0", "--raw-prefix", f"{s3_bucket}/results"]) == 2
    assert main(["train", "--preprocessed", f"{s3_bucket}/nothing", "--output", str(tmp_path / "t"),
                 "--configuration", "3d_fullres", "--fold", "0"]) == 2
    assert not fake_training[0]


def test_cascade_stages_the_lowres_segmentations(s3_bucket, fake_training, tmp_path):
    calls, _ = fake_training
    pre, results = f"{s3_bucket}/pre/Task500_Synth", f"{s3_bucket}/results/nnUNet"
    _preprocessed(pre, cascade=True)
    out = f"{results}/3d_cascade_fullres/Task500_Synth/nnUNetTrainerV2CascadeFullRes__nnUNetPlansv2.1"
    common = ["--preprocessed", pre, "--output", out, "--configuration", "3d_cascade_fullres", "--fold", "0",
              "--trainer", "nnUNetTrainerV2CascadeFullRes"]
    train = ["train", *common, "--epochs", "1"]
    assert main(train) == 2 and not calls  # no 3d_lowres predictions at nnU-Net's location yet

    lowres = f"{results}/3d_lowres/Task500_Synth/nnUNetTrainerV2__nnUNetPlansv2.1/pred_next_stage"
    names = ["case_000_segFromPrevStage.npy", "case_001_segFromPrevStage.npy"]
    for name in names:
        storage.write_text(f"{lowres}/{name}", name)
    assert main(train) == 0
    assert calls[0]["prev_stage"] == names
    assert "nnUNetData_plans_v2.1_stage1/case_000.npy" in calls[0]["staged"]
    assert not [p for p in calls[0]["staged"] if "segFromPrevStage" in p]  # beside the data, not inside it
    assert main(train) == 0 and len(calls) == 1  # unchanged: skipped

    storage.write_text(f"{lowres}/{names[1]}", "predicted again")  # a new 3d_lowres result reruns the cascade
    assert main(train) == 0 and calls[1]["started_at"] == 0

    elsewhere = f"{s3_bucket}/lowres-elsewhere"
    storage.write_text(f"{elsewhere}/{names[0]}", "other")
    assert main([*train, "--prev-stage", elsewhere]) == 0
    assert calls[2]["prev_stage"] == names[:1] and calls[2]["started_at"] == 0
    assert main(["validate", *common, "--prev-stage", elsewhere]) == 0
    assert calls[3]["validation_only"] and calls[3]["prev_stage"] == names[:1]

    assert main(["train", "--preprocessed", pre, "--output", f"{s3_bucket}/results/fullres", "--configuration",
                 "3d_fullres", "--fold", "0", "--prev-stage", elsewhere]) == 2  # cascade only
    assert main([*train, "--prev-stage", f"{s3_bucket}/empty"]) == 2 and len(calls) == 4
