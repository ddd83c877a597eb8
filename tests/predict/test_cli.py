"""``nnUNet_predict`` (v1 flags, $RESULTS_FOLDER layout) and the ``python -m stages predict`` stage."""

from __future__ import annotations

import importlib
import json

import numpy as np
import SimpleITK as sitk

from stages import storage
from stages.__main__ import main as stages_main
from stages.predict.cascade import LOWRES_PREDICTIONS
from tests.factories import make_case
from tests.predict.conftest import TASK, write_input_folder

compat_predict = importlib.import_module("nnkube.nnunet_compat.predict")

FAST = ["--disable_tta", "--num_threads_preprocessing", "0", "--num_threads_nifti_save", "0"]


def _inputs(folder, n=3, shape=(12, 14, 12)):
    return write_input_folder(folder, [make_case(f"t_{i}", shape=shape, seed=20 + i) for i in range(n)])


def test_nnunet_predict_finds_the_model_by_task_id(tiny_task, lowres_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESULTS_FOLDER", str(tiny_task.results))
    inputs = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    rc = compat_predict.main(["-i", str(inputs), "-o", str(out), "-t", "500", "-m", "3d_lowres", "-f", "0", "1",
                              "-z", *FAST])
    assert rc == 0, capsys.readouterr().err
    assert "predicted 3 case(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["t_0.nii.gz", "t_1.nii.gz", "t_2.nii.gz"]
    assert sorted(p.name for p in out.glob("*.npz")) == ["t_0.npz", "t_1.npz", "t_2.npz"]
    ref = sitk.ReadImage(str(inputs / "t_1_0000.nii.gz"))
    assert sitk.ReadImage(str(out / "t_1.nii.gz")).GetSize() == ref.GetSize()
    # a second run skips what exists; --overwrite_existing predicts again
    assert compat_predict.main(["-i", str(inputs), "-o", str(out), "-t", TASK, "-m", "3d_lowres", *FAST]) == 0
    assert "predicted 0 case(s) (3 already done)" in capsys.readouterr().out
    assert compat_predict.main(["-i", str(inputs), "-o", str(out), "-t", TASK, "-m", "3d_lowres", "--part_id", "1",
                                "--num_parts", "2", "--overwrite_existing", *FAST]) == 0
    assert "predicted 1 case(s)" in capsys.readouterr().out


def test_nnunet_predict_errors_exit_2_with_a_clear_message(tiny_task, lowres_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESULTS_FOLDER", str(tiny_task.results))
    inputs = _inputs(tmp_path / "in", n=2)
    (inputs / "t_1_0000.nii.gz").rename(inputs / "t_1_0001.nii.gz")
    base = ["-i", str(inputs), "-o", str(tmp_path / "out"), *FAST]
    assert compat_predict.main([*base, "-t", TASK, "-m", "3d_lowres"]) == 2
    assert "case t_1: missing t_1_0000.nii.gz" in capsys.readouterr().err
    assert compat_predict.main([*base, "-t", "77", "-m", "3d_lowres"]) == 2
    assert "no task with id 77" in capsys.readouterr().err
    assert compat_predict.main([*base, "-t", TASK, "-m", "3d_lowres", "-tr", "nnUNetTrainerV2_never"]) == 2
    assert "nnUNetTrainerV2_never__nnUNetPlansv2.1: model (trainer) folder not found" in capsys.readouterr().err
    assert compat_predict.main([*base, "-t", TASK, "-m", "3d_lowres", "-f", "7"]) == 2
    assert "fold_7" in capsys.readouterr().err
    monkeypatch.delenv("RESULTS_FOLDER")
    assert compat_predict.main([*base, "-t", TASK, "-m", "3d_lowres"]) == 2
    assert "RESULTS_FOLDER" in capsys.readouterr().err


def test_nnunet_predict_cascade_runs_lowres_first(tiny_task, cascade_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESULTS_FOLDER", str(tiny_task.results))
    inputs = _inputs(tmp_path / "in", n=1, shape=(20, 20, 20))
    out = tmp_path / "out"
    assert compat_predict.main(["-i", str(inputs), "-o", str(out), "-t", TASK, "-m", "3d_cascade_fullres",
                                *FAST]) == 0, capsys.readouterr().err
    assert (out / LOWRES_PREDICTIONS / "t_0.nii.gz").is_file() and (out / "t_0.nii.gz").is_file()
    again = tmp_path / "again"
    assert compat_predict.main(["-i", str(inputs), "-o", str(again), "-t", TASK, "-m", "3d_cascade_fullres",
                                "-l", str(out / LOWRES_PREDICTIONS), *FAST]) == 0
    assert not (again / LOWRES_PREDICTIONS).exists()
    assert (again / "t_0.nii.gz").read_bytes() == (out / "t_0.nii.gz").read_bytes()


def _stage(model, inputs, output, *extra):
    return stages_main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(output),
                        "--disable-tta", "--num-threads-preprocessing", "0", *map(str, extra)])


def test_stage_predicts_its_shard_and_skips_a_rerun(lowres_model, tmp_path):
    inputs = _inputs(tmp_path / "in", n=3)
    out = tmp_path / "out"
    result = tmp_path / "r0.json"
    assert _stage(lowres_model.folder, inputs, out, "--folds", "0,1", "--part-id", 0, "--num-parts", 2,
                  "--result-json", result) == 0
    first = json.loads(result.read_text())
    assert first["status"] == "done" and first["extra"]["case_ids"] == ["t_0", "t_2"]
    assert first["extra"]["folds"] == ["0", "1"] and first["extra"]["configuration"] == "3d_lowres"
    assert (out / "_NNKUBE_COMPLETE.predict-0-of-2.json").is_file()
    assert _stage(lowres_model.folder, inputs, out, "--folds", "0,1", "--part-id", 0, "--num-parts", 2,
                  "--result-json", result) == 0
    assert json.loads(result.read_text())["status"] == "skipped"
    assert _stage(lowres_model.folder, inputs, out, "--part-id", 1, "--num-parts", 2) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["t_0.nii.gz", "t_1.nii.gz", "t_2.nii.gz"]
    assert _stage(lowres_model.folder, inputs, out, "--part-id", 2, "--num-parts", 2) == 2
    assert _stage(tmp_path, inputs, out) == 2  # not a trainer folder


def test_stage_reads_and_writes_s3(lowres_model, cascade_model, tmp_path, s3_bucket):
    model = f"{s3_bucket}/results/3d_lowres/{TASK}/nnUNetTrainerV2__nnUNetPlansv2.1"
    cascade = f"{s3_bucket}/results/3d_cascade_fullres/{TASK}/nnUNetTrainerV2CascadeFullRes__nnUNetPlansv2.1"
    for local, remote in ((lowres_model.folder, model), (cascade_model, cascade)):
        for rel in ("plans.json", "fold_0/model_final_checkpoint.model", "fold_0/model_final_checkpoint.model.json"):
            storage.upload_file(local / rel, f"{remote}/{rel}")
    storage.upload_file(lowres_model.folder / "fold_0" / "validation_raw" / "summary.json",
                        f"{model}/fold_0/validation_raw/summary.json")  # other trainer-folder files are ignored
    inputs = _inputs(tmp_path / "in", n=2, shape=(20, 20, 20))
    for path in inputs.iterdir():
        storage.upload_file(path, f"{s3_bucket}/in/{path.name}")
    out = f"{s3_bucket}/out"
    assert _stage(model, f"{s3_bucket}/in", out, "--save-npz") == 0
    names = sorted(storage.basename(u) for u in storage.list_prefix(out))
    assert names == ["_NNKUBE_COMPLETE.predict.json", "t_0.json", "t_0.nii.gz", "t_0.npz", "t_1.json", "t_1.nii.gz",
                     "t_1.npz"]
    local = load_from_s3(f"{out}/t_1.nii.gz", tmp_path / "t_1.nii.gz")
    assert local.GetSize() == sitk.ReadImage(str(inputs / "t_1_0000.nii.gz")).GetSize()
    # the cascade stage with the lowres predictions as input
    assert _stage(cascade, f"{s3_bucket}/in", f"{s3_bucket}/cascade_out") == 2  # neither -l nor a lowres model
    assert _stage(cascade, f"{s3_bucket}/in", f"{s3_bucket}/cascade_out", "--lowres-segmentations", out) == 0
    seg = sitk.GetArrayFromImage(load_from_s3(f"{s3_bucket}/cascade_out/t_0.nii.gz", tmp_path / "c.nii.gz"))
    assert set(np.unique(seg)) <= {0, 1, 2}
    # --lowres-model: 3d_lowres runs first (into <output>/3d_lowres_predictions), same result as above
    assert _stage(cascade, f"{s3_bucket}/in", f"{s3_bucket}/cascade2", "--lowres-model", model) == 0
    assert storage.exists(f"{s3_bucket}/cascade2/{LOWRES_PREDICTIONS}/t_1.nii.gz")
    seg2 = sitk.GetArrayFromImage(load_from_s3(f"{s3_bucket}/cascade2/t_0.nii.gz", tmp_path / "c2.nii.gz"))
    assert np.array_equal(seg, seg2)


def load_from_s3(uri: str, local) -> sitk.Image:
    """Download one image and read it."""
    storage.download_file(uri, local)
    return sitk.ReadImage(str(local))
