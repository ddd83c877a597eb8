"""The cascade (spec §9): next-stage predictions, the cascade trainer and cascade inference on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from stages.errors import BadInputError, DatasetError
from stages.imageio import Geometry
from stages.predict.cascade import (
    LOWRES_PREDICTIONS,
    PRED_NEXT_STAGE,
    onehot_foreground,
    predict_cascade,
    predict_next_stage,
    prev_stage_input,
)
from stages.predict.predictor import load_model, predict_cases
from stages.preprocess.models import CaseProperties
from stages.preprocess.preprocessor import PreprocessParams, load_case
from stages.preprocess.resampling import resize_segmentation
from stages.train.data import prev_stage_file
from tests.factories import make_case
from tests.predict.conftest import TASK, odd_geometry_case, read_labels, write_input_folder

SERIAL = {"num_threads_preprocessing": 0, "num_threads_nifti_save": 0}


def test_every_case_gets_an_out_of_fold_segmentation_on_the_fullres_grid(tiny_task, lowres_model, tmp_path):
    fullres = tiny_task.preprocessed / tiny_task.plans.stage_folder(1)
    folder = lowres_model.folder / PRED_NEXT_STAGE
    assert sorted(p.name for p in folder.iterdir()) == [prev_stage_file(c) for c in tiny_task.case_ids]
    assert [p.name for p in lowres_model.next_stage_fold0] == [prev_stage_file(c) for c in tiny_task.folds[0][1]]
    for case_id in tiny_task.case_ids:
        seg = np.load(folder / prev_stage_file(case_id))
        data, _, _ = load_case(fullres, case_id)
        assert seg.dtype == np.uint8 and seg.shape == data.shape[1:] and set(np.unique(seg)) <= {0, 1, 2}
    # the training hook (in-memory network) and the checkpoint in the trainer folder agree
    again = predict_next_stage(lowres_model.folder, 0, fullres, tmp_path)
    for path in again:
        assert np.array_equal(np.load(path), np.load(folder / path.name))


def test_cascade_trainer_inputs_and_missing_previous_stage(tiny_task, lowres_model, tmp_path):
    from stages.train.cascade import default_prev_stage_folder, nnUNetTrainerV2CascadeFullRes
    from stages.train.trainer import get_trainer_class

    assert get_trainer_class("nnUNetTrainerV2CascadeFullRes") is nnUNetTrainerV2CascadeFullRes
    fold_dir = tiny_task.trainer_folder("3d_cascade_fullres", "nnUNetTrainerV2CascadeFullRes") / "fold_9"
    trainer = nnUNetTrainerV2CascadeFullRes(tiny_task.plans, "3d_cascade_fullres", 0, tiny_task.preprocessed,
                                            tmp_path / "fold_0", device="cpu")
    assert trainer.num_input_channels == 1 + 2
    assert default_prev_stage_folder(fold_dir, "nnUNetTrainerV2", "nnUNetPlansv2.1") == \
        lowres_model.folder / PRED_NEXT_STAGE
    trainer.prev_stage_folder = lowres_model.folder / PRED_NEXT_STAGE
    case_id = tiny_task.folds[0][1][0]
    data, _, _ = load_case(trainer.data_folder, case_id)
    net_in = trainer.network_input(case_id, data)
    seg = np.load(trainer.prev_stage_folder / prev_stage_file(case_id))
    assert net_in.shape == (3, *data.shape[1:]) and net_in.dtype == np.float32
    assert np.array_equal(net_in[0], data[0]) and np.array_equal(net_in[1:], onehot_foreground(seg, 3))
    empty = tmp_path / "empty"
    empty.mkdir()
    trainer.prev_stage_folder = empty
    with pytest.raises(DatasetError, match=f"seg from prev stage missing.*{tiny_task.case_ids[0]}"):
        trainer.split()
    with pytest.raises(DatasetError, match=f"seg from prev stage missing.*{case_id}"):
        trainer.network_input(case_id, data)
    with pytest.raises(BadInputError, match="3d_cascade_fullres only"):
        nnUNetTrainerV2CascadeFullRes(tiny_task.plans, "3d_fullres", 0, tiny_task.preprocessed, tmp_path / "x")


def test_prev_stage_input_crops_transposes_resizes_and_encodes(tmp_path):
    rng = np.random.RandomState(0)
    seg = rng.randint(0, 3, size=(10, 12, 14)).astype(np.uint8)
    img = sitk.GetImageFromArray(seg)
    sitk.WriteImage(img, str(tmp_path / "low.nii.gz"))
    bbox = [[1, 9], [2, 12], [0, 14]]
    target = [7, 10, 5]  # transposed order (x, z, y) at another resolution
    props = CaseProperties(case_id="k", geometry=Geometry.of(img), original_size_of_raw_data=[10, 12, 14],
                           original_spacing=[1.0] * 3, crop_bbox=bbox, size_after_cropping=[8, 10, 14],
                           size_after_resampling=target, spacing_after_resampling=[1.0] * 3)
    params = PreprocessParams(target_spacing=[1.0] * 3, transpose_forward=[2, 0, 1], transpose_backward=[1, 2, 0],
                              normalization_schemes={0: "nonCT"}, use_mask_for_norm={0: False}, all_classes=[1, 2])
    got = prev_stage_input(tmp_path / "low.nii.gz", props, params, 3)
    expected = resize_segmentation(seg[1:9, 2:12, :].transpose(2, 0, 1), target, order=1)
    assert got.shape == (2, *target) and np.array_equal(got, onehot_foreground(expected, 3))
    with pytest.raises(BadInputError, match="labels 0..2"):
        prev_stage_input(tmp_path / "low.nii.gz", props, params, 2)
    bad = props.model_copy(update={"original_size_of_raw_data": [10, 12, 15]})
    with pytest.raises(BadInputError, match="case k: low-resolution segmentation"):
        prev_stage_input(tmp_path / "low.nii.gz", bad, params, 3)


def test_cascade_end_to_end_on_cpu(tiny_task, cascade_model, tmp_path):
    assert (cascade_model / "fold_0" / "validation_raw" / "summary.json").is_file()
    lowres = tiny_task.trainer_folder("3d_lowres")
    cases = [odd_geometry_case("odd_002", seed=5), make_case("big_0", shape=(22, 20, 24), seed=9)]
    inputs = write_input_folder(tmp_path / "in", cases)
    out = tmp_path / "out"
    result = predict_cascade(cascade_model, lowres, inputs, out, disable_tta=True, postprocessing=None, **SERIAL)
    assert result.predicted == ["big_0", "odd_002"]
    for case in cases:
        ref = sitk.ReadImage(str(inputs / f"{case.case_id}_0000.nii.gz"))
        for folder in (out, out / LOWRES_PREDICTIONS):
            labels, img = read_labels(folder / f"{case.case_id}.nii.gz")
            assert img.GetSize() == ref.GetSize() and img.GetSpacing() == ref.GetSpacing()
            assert img.GetOrigin() == ref.GetOrigin() and img.GetDirection() == ref.GetDirection()
            assert set(np.unique(labels)) <= {0, 1, 2}
    # given low-resolution segmentations (-l) are used as they are: same result, no lowres run
    model = load_model(cascade_model, device="cpu")
    again = predict_cases(model, inputs, tmp_path / "again", disable_tta=True, postprocessing=None,
                          lowres_segmentations=out / LOWRES_PREDICTIONS, **SERIAL)
    assert again.predicted == result.predicted and not (tmp_path / "again" / LOWRES_PREDICTIONS).exists()
    for case in cases:
        name = f"{case.case_id}.nii.gz"
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
    # the low-resolution channels matter: an empty lowres segmentation changes the cascade's output
    blank = tmp_path / "blank"
    blank.mkdir()
    for case in cases:
        labels, img = read_labels(out / LOWRES_PREDICTIONS / f"{case.case_id}.nii.gz")
        zero = sitk.GetImageFromArray(np.zeros_like(labels))
        zero.CopyInformation(img)
        sitk.WriteImage(zero, str(blank / f"{case.case_id}.nii.gz"))
    predict_cases(model, inputs, tmp_path / "blank_out", disable_tta=True, postprocessing=None, save_npz=True,
                  lowres_segmentations=blank, **SERIAL)
    predict_cases(model, inputs, tmp_path / "npz_out", disable_tta=True, postprocessing=None, save_npz=True,
                  lowres_segmentations=out / LOWRES_PREDICTIONS, **SERIAL)
    a = np.load(tmp_path / "blank_out" / "big_0.npz")["softmax"].astype(np.float32)
    b = np.load(tmp_path / "npz_out" / "big_0.npz")["softmax"].astype(np.float32)
    assert np.abs(a - b).max() > 1e-3


def test_cascade_model_needs_lowres_segmentations(tiny_task, cascade_model, tmp_path):
    model = load_model(cascade_model, device="cpu")
    assert model.is_cascade and model.num_input_channels == 1 + 2 and TASK in str(model.folder)
    inputs = write_input_folder(tmp_path / "in", [make_case("c_0", shape=(12, 12, 12))])
    with pytest.raises(BadInputError, match="3d_lowres"):
        predict_cases(model, inputs, tmp_path / "out", **SERIAL)
    (tmp_path / "lowres").mkdir()
    with pytest.raises(BadInputError, match="c_0"):
        predict_cases(model, inputs, tmp_path / "out", lowres_segmentations=tmp_path / "lowres", **SERIAL)
    with pytest.raises(BadInputError, match="not a 3d_cascade_fullres model"):
        predict_cascade(load_model(tiny_task.trainer_folder("3d_lowres"), device="cpu"), None, inputs, tmp_path)
