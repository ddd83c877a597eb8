"""nnUNet_predict as a library: model loading, input checks, geometry, TTA, sharding, parity with validation."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from stages.errors import BadInputError
from stages.postprocess.connected_components import apply_postprocessing
from stages.postprocess.models import POSTPROCESSING_JSON, PostprocessingRules
from stages.predict.export import load_softmax
from stages.predict.inputs import PreprocessJob, group_input_files, iter_preprocessed, list_input_cases, shard_case_ids
from stages.predict.predictor import load_model, predict_cases
from stages.workers import CRASH_CASE_ENV, WorkerDiedError
from tests.factories import make_case
from tests.predict.conftest import odd_geometry_case, read_labels, write_input_folder

SERIAL = {"num_threads_preprocessing": 0, "num_threads_nifti_save": 0}


def assert_same_geometry(pred: sitk.Image, ref: sitk.Image) -> None:
    """Size, spacing, origin and direction of ``pred`` equal those of ``ref`` exactly."""
    assert pred.GetSize() == ref.GetSize()
    assert pred.GetSpacing() == ref.GetSpacing()
    assert pred.GetOrigin() == ref.GetOrigin()
    assert pred.GetDirection() == ref.GetDirection()


@pytest.fixture(scope="module")
def model(lowres_model):
    """Both folds of the 3d_lowres model on the CPU."""
    return load_model(lowres_model.folder, device="cpu")


def test_load_model_finds_every_fold_and_names_what_is_missing(lowres_model, tmp_path):
    full = load_model(lowres_model.folder, device="cpu")
    assert full.folds == ["0", "1"] and len(full.networks) == 2
    assert full.configuration == "3d_lowres" and full.num_classes == 3 and full.num_input_channels == 1
    assert not full.amp and all(not n.training for n in full.networks)
    one = load_model(lowres_model.folder, folds=[1], device="cpu")
    assert one.folds == ["1"]
    with pytest.raises(BadInputError, match="fold_4"):
        load_model(lowres_model.folder, folds=[0, 4], device="cpu")
    with pytest.raises(BadInputError, match="model_nope.model"):
        load_model(lowres_model.folder, checkpoint="model_nope", device="cpu")
    with pytest.raises(BadInputError, match="not found"):
        load_model(tmp_path / "nothing", device="cpu")
    broken = tmp_path / "broken"
    shutil.copytree(lowres_model.folder / "fold_0", broken / "fold_0")
    with pytest.raises(BadInputError, match="plans.json"):
        load_model(broken, device="cpu")
    shutil.copy(lowres_model.folder / "plans.json", broken / "plans.json")
    (broken / "fold_1").mkdir()
    with pytest.raises(BadInputError, match="fold 1 has no checkpoint"):
        load_model(broken, device="cpu")


def test_outputs_keep_the_input_geometry_with_and_without_tta(model, tmp_path):
    case = odd_geometry_case("odd_001")
    inputs = write_input_folder(tmp_path / "in", [case])
    with_tta = predict_cases(model, inputs, tmp_path / "tta", save_npz=True, postprocessing=None, **SERIAL)
    no_tta = predict_cases(model, inputs, tmp_path / "plain", save_npz=True, disable_tta=True, postprocessing=None,
                           **SERIAL)
    assert with_tta.predicted == no_tta.predicted == ["odd_001"]
    ref = sitk.ReadImage(str(inputs / "odd_001_0000.nii.gz"))
    probs = {}
    for name in ("tta", "plain"):
        labels, img = read_labels(tmp_path / name / "odd_001.nii.gz")
        assert_same_geometry(img, ref)
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
        softmax = load_softmax(tmp_path / name / "odd_001.npz")
        assert softmax.dtype == np.float16 and softmax.shape == (3, *labels.shape)
        np.testing.assert_allclose(softmax.astype(np.float32).sum(0), 1.0, atol=5e-3)
        inside = softmax[0] < 1  # outside the nonzero crop box the export is background with certainty
        assert np.array_equal(labels[inside], np.argmax(softmax, 0)[inside]) or not inside.any()
        assert (labels[:2] == 0).all() and (labels[:, :2] == 0).all()  # the zero border was cropped away
        assert json.loads((tmp_path / name / "odd_001.json").read_text())["case_id"] == "odd_001"
        probs[name] = softmax.astype(np.float32)
    assert np.abs(probs["tta"] - probs["plain"]).max() > 1e-3  # the mirrored passes changed the result


@pytest.mark.parametrize("configuration", ["3d_lowres", "2d"])
def test_training_case_prediction_equals_its_validation_export(configuration, tiny_task, request, tmp_path):
    folder = request.getfixturevalue("lowres_model").folder if configuration == "3d_lowres" else \
        request.getfixturevalue("model_2d")
    case_id = tiny_task.folds[0][1][0]
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(tiny_task.raw / "imagesTr" / f"{case_id}_0000.nii.gz", inputs)
    fold0 = load_model(folder, folds=[0], device="cpu")
    assert fold0.configuration == configuration
    predict_cases(fold0, inputs, tmp_path / "out", postprocessing=None, **SERIAL)
    validation = folder / "fold_0" / "validation_raw" / f"{case_id}.nii.gz"
    ours, ours_img = read_labels(tmp_path / "out" / f"{case_id}.nii.gz")
    theirs, theirs_img = read_labels(validation)
    assert np.array_equal(ours, theirs)
    assert_same_geometry(ours_img, theirs_img)
    assert (tmp_path / "out" / f"{case_id}.nii.gz").read_bytes() == validation.read_bytes()


def test_2d_model_keeps_the_input_geometry(model_2d, tmp_path):
    model = load_model(model_2d, device="cpu")
    assert model.dimension == "2d" and model.preprocess_params.is_2d
    inputs = write_input_folder(tmp_path / "in", [odd_geometry_case("odd_2d")])
    predict_cases(model, inputs, tmp_path / "out", save_npz=True, postprocessing=None, **SERIAL)
    labels, img = read_labels(tmp_path / "out" / "odd_2d.nii.gz")
    assert_same_geometry(img, sitk.ReadImage(str(inputs / "odd_2d_0000.nii.gz")))
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert load_softmax(tmp_path / "out" / "odd_2d.npz").shape == (3, *labels.shape)


def test_missing_modality_is_named_and_extra_files_are_warned(model, tmp_path):
    names = ["a_0000.nii.gz", "a_0001.nii.gz", "b_0001.nii.gz", "c_0000.nii.gz", "c_0001.nii.gz", "notes.txt"]
    with pytest.raises(BadInputError, match=r"case b: missing b_0000\.nii\.gz") as err:
        group_input_files(names, 2, "in")
    assert "case a" not in str(err.value) and "case c" not in str(err.value)
    folder = write_input_folder(tmp_path / "in", [make_case("x", shape=(8, 8, 8))])
    (folder / "x_0000.nii.gz").rename(folder / "x_0001.nii.gz")
    write_input_folder(folder, [make_case("y", shape=(8, 8, 8))])
    with pytest.raises(BadInputError, match=r"case x: missing x_0000\.nii\.gz"):
        predict_cases(model, folder, tmp_path / "out", **SERIAL)
    (folder / "x_0001.nii.gz").unlink()
    (folder / "y_0000.nii.gz").rename(folder / "y.nii.gz")
    with pytest.raises(BadInputError, match="no input images"):
        predict_cases(model, folder, tmp_path / "out", **SERIAL)


def test_missing_modality_group_keeps_complete_cases(caplog):
    with caplog.at_level(logging.WARNING):
        grouped = group_input_files(["a_0000.nii.gz", "a_0001.nii.gz", "a_0005.nii.gz", "c_0000.nrrd"], 1, "in")
    assert grouped == {"a": {0: "a_0000.nii.gz"}, "c": {0: "c_0000.nrrd"}}
    assert "a_0001.nii.gz" in caplog.text and "a_0005.nii.gz" in caplog.text


def test_shards_cover_every_case_once_and_existing_outputs_are_skipped(model, tmp_path):
    cases = [make_case(f"s_{i}", shape=(10, 12, 10), seed=i) for i in range(5)]
    inputs = write_input_folder(tmp_path / "in", cases)
    out = tmp_path / "out"
    seen = []
    for part in range(3):
        result = predict_cases(model, inputs, out, disable_tta=True, part_id=part, num_parts=3, **SERIAL)
        assert result.predicted == shard_case_ids([c.case_id for c in cases], part, 3)
        seen += result.predicted
    assert sorted(seen) == [c.case_id for c in cases]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c.case_id}.nii.gz" for c in cases]
    again = predict_cases(model, inputs, out, disable_tta=True, part_id=1, num_parts=3, **SERIAL)
    assert again.predicted == [] and again.skipped == ["s_1", "s_4"]
    stamp = (out / "s_1.nii.gz").stat().st_mtime_ns
    redo = predict_cases(model, inputs, out, disable_tta=True, part_id=1, num_parts=3, overwrite=True, **SERIAL)
    assert redo.predicted == ["s_1", "s_4"] and (out / "s_1.nii.gz").stat().st_mtime_ns != stamp
    with pytest.raises(BadInputError, match="part_id 3"):
        predict_cases(model, inputs, out, part_id=3, num_parts=3, **SERIAL)


def test_background_workers_give_the_same_result_and_a_dead_worker_is_named(model, tmp_path, monkeypatch):
    cases = [make_case(f"w_{i}", shape=(10, 12, 10), seed=10 + i) for i in range(3)]
    inputs = write_input_folder(tmp_path / "in", cases)
    predict_cases(model, inputs, tmp_path / "serial", disable_tta=True, postprocessing=None, **SERIAL)
    predict_cases(model, inputs, tmp_path / "workers", disable_tta=True, postprocessing=None,
                  num_threads_preprocessing=2, num_threads_nifti_save=1)
    for case in cases:
        name = f"{case.case_id}.nii.gz"
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "workers" / name).read_bytes()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "w_9_0000.nii.gz").write_bytes(b"not an image")
    with pytest.raises(BadInputError, match="w_9_0000.nii.gz"):
        predict_cases(model, tmp_path / "corrupt", tmp_path / "c_out", num_threads_preprocessing=1,
                      num_threads_nifti_save=0)
    monkeypatch.setenv(CRASH_CASE_ENV, "w_1")
    with pytest.raises(WorkerDiedError, match="w_1"):
        predict_cases(model, inputs, tmp_path / "crash", disable_tta=True, num_threads_preprocessing=2,
                      num_threads_nifti_save=0)


def test_large_preprocessed_cases_travel_through_temporary_files(model, tmp_path):
    cases = list_input_cases(write_input_folder(tmp_path / "in", [make_case(f"f_{i}", shape=(9, 10, 11), seed=i)
                                                                  for i in range(3)]), 1)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    inline = PreprocessJob(model.preprocess_params, 3)
    via_files = PreprocessJob(model.preprocess_params, 3, scratch_dir=str(scratch), inline_limit=0)
    expected = [(c.case_id, d) for c, d, _ in iter_preprocessed(cases, inline, 0)]
    got = [(c.case_id, d) for c, d, _ in iter_preprocessed(cases, via_files, 2)]
    assert [c for c, _ in got] == ["f_0", "f_1", "f_2"]
    for (_, a), (_, b) in zip(expected, got):
        assert np.array_equal(a, b)
    assert list(scratch.iterdir()) == []


def test_trainer_postprocessing_is_applied_and_copied(lowres_model, tmp_path, caplog):
    folder = tmp_path / "model"
    shutil.copytree(lowres_model.folder, folder, ignore=shutil.ignore_patterns("validation_raw", "fold_1"))
    case = make_case("pp_0", shape=(20, 20, 20), seed=3)
    inputs = write_input_folder(tmp_path / "in", [case])
    model = load_model(folder, device="cpu")
    with caplog.at_level(logging.WARNING):
        raw = predict_cases(model, inputs, tmp_path / "raw", disable_tta=True, **SERIAL)
    assert raw.postprocessing is None and POSTPROCESSING_JSON in caplog.text
    assert not (tmp_path / "raw" / POSTPROCESSING_JSON).exists()
    rules = PostprocessingRules(for_which_classes=[[1, 2], 1])
    rules.save(folder / POSTPROCESSING_JSON)
    done = predict_cases(model, inputs, tmp_path / "pp", disable_tta=True, save_npz=True, **SERIAL)
    assert done.postprocessing == folder / POSTPROCESSING_JSON
    assert sorted(p.name for p in (tmp_path / "pp").iterdir()) == [POSTPROCESSING_JSON, "pp_0.json", "pp_0.nii.gz",
                                                                   "pp_0.npz"]  # nothing left in a staging folder
    assert sorted(done.files) == sorted(tmp_path / "pp" / n for n in ("pp_0.json", "pp_0.nii.gz", "pp_0.npz"))
    assert (tmp_path / "pp" / POSTPROCESSING_JSON).read_text() == (folder / POSTPROCESSING_JSON).read_text()
    labels_raw, img = read_labels(tmp_path / "raw" / "pp_0.nii.gz")
    labels_pp, _ = read_labels(tmp_path / "pp" / "pp_0.nii.gz")
    expected = apply_postprocessing(labels_raw, rules, tuple(reversed(img.GetSpacing())))
    assert np.array_equal(labels_pp, expected)
    off = predict_cases(model, inputs, tmp_path / "off", disable_tta=True, postprocessing=None, **SERIAL)
    assert off.postprocessing is None
    assert np.array_equal(read_labels(tmp_path / "off" / "pp_0.nii.gz")[0], labels_raw)
