"""Acceptance on the real MSD Hippocampus data, with nnU-Net v1's commands end to end (spec §8).

``nnUNet_convert_decathlon_task`` -> ``nnUNet_plan_and_preprocess -t 4 -pl2d None`` -> ``nnUNet_train
3d_fullres nnUNetTrainerV2 4 0`` (one epoch of a few iterations: the network is barely trained, this checks the
mechanics) -> ``nnUNet_predict`` of the 130 test cases without TTA, and of three of them with TTA. Every
prediction must lie exactly on its input image's grid.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

TASK = "Task004_Hippocampus"
TTA_CASES = 3

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def hippo_model(hippocampus: Path, tmp_path_factory: pytest.TempPathFactory):
    """Converted, planned (3D only), preprocessed Hippocampus with 3d_fullres fold 0 trained on a tiny budget."""
    from nnkube.nnunet_compat.convert import main as convert_main
    from nnkube.nnunet_compat.plan_and_preprocess import main as plan_and_preprocess_main

    from tests.tiny_task import run_compat_train

    base = tmp_path_factory.mktemp("hippo")
    times = {}
    with pytest.MonkeyPatch.context() as mp:
        for var, sub in (("nnUNet_raw_data_base", "raw"), ("nnUNet_preprocessed", "preprocessed"),
                         ("RESULTS_FOLDER", "results")):
            (base / sub).mkdir()
            mp.setenv(var, str(base / sub))
        mp.setenv("nnUNet_n_proc_DA", "0")
        mp.setenv("NNKUBE_EXPORT_WORKERS", "0")
        start = time.monotonic()
        assert convert_main(["-i", str(hippocampus), "-p", "2"]) == 0
        times["convert"] = time.monotonic() - start
        start = time.monotonic()
        assert plan_and_preprocess_main(["-t", "4", "-pl2d", "None", "-tl", "2", "-tf", "2"]) == 0
        times["plan_and_preprocess"] = time.monotonic() - start
        start = time.monotonic()
        assert run_compat_train(["3d_fullres", "nnUNetTrainerV2", "4", "0", "--epochs", "1", "--iterations", "2",
                                 "--val_iterations", "1", "--num_workers", "0", "--disable_validation"]) == 0
        times["train"] = time.monotonic() - start
    log.warning("hippocampus setup seconds: %s", {k: round(v, 1) for k, v in times.items()})
    return base


def _predict(base: Path, monkeypatch: pytest.MonkeyPatch, inputs: Path, output: Path, *flags: str) -> float:
    from nnkube.nnunet_compat.predict import main as predict_main

    for var, sub in (("nnUNet_raw_data_base", "raw"), ("nnUNet_preprocessed", "preprocessed"),
                     ("RESULTS_FOLDER", "results")):
        monkeypatch.setenv(var, str(base / sub))
    monkeypatch.setenv("NNKUBE_EXPORT_WORKERS", "0")
    start = time.monotonic()
    assert predict_main(["-i", str(inputs), "-o", str(output), "-t", "4", "-m", "3d_fullres", *flags]) == 0
    return time.monotonic() - start


def _assert_on_input_grid(prediction: Path, image: Path) -> np.ndarray:
    seg, img = sitk.ReadImage(str(prediction)), sitk.ReadImage(str(image))
    assert seg.GetSize() == img.GetSize(), prediction.name
    assert seg.GetSpacing() == img.GetSpacing(), prediction.name
    assert seg.GetOrigin() == img.GetOrigin(), prediction.name
    assert seg.GetDirection() == img.GetDirection(), prediction.name
    labels = sitk.GetArrayFromImage(seg)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2}, prediction.name
    return labels


def test_predict_test_set_on_input_geometry(hippo_model, tmp_path, monkeypatch):
    images_ts = hippo_model / "raw" / "nnUNet_raw_data" / TASK / "imagesTs"
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in images_ts.glob("*_0000.nii.gz"))
    assert len(cases) == 130
    out = tmp_path / "pred"
    seconds = _predict(hippo_model, monkeypatch, images_ts, out, "--disable_tta")
    log.warning("nnUNet_predict --disable_tta: %d cases in %.1f s", len(cases), seconds)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in cases]
    segs = {c: _assert_on_input_grid(out / f"{c}.nii.gz", images_ts / f"{c}_0000.nii.gz") for c in cases}

    # TTA on a few cases; probabilities of the same cases without TTA for comparison
    few = tmp_path / "few"
    few.mkdir()
    for case in cases[:TTA_CASES]:
        (few / f"{case}_0000.nii.gz").symlink_to(images_ts / f"{case}_0000.nii.gz")
    seconds = _predict(hippo_model, monkeypatch, few, tmp_path / "tta", "-z")
    log.warning("nnUNet_predict with TTA: %d cases in %.1f s", TTA_CASES, seconds)
    _predict(hippo_model, monkeypatch, few, tmp_path / "no_tta", "-z", "--disable_tta")
    for case in cases[:TTA_CASES]:
        tta_seg = _assert_on_input_grid(tmp_path / "tta" / f"{case}.nii.gz", images_ts / f"{case}_0000.nii.gz")
        with np.load(tmp_path / "tta" / f"{case}.npz") as f:
            tta = f["softmax"].astype(np.float32)
        with np.load(tmp_path / "no_tta" / f"{case}.npz") as f:
            plain = f["softmax"].astype(np.float32)
        assert tta.shape == plain.shape == (3, *tta_seg.shape)
        np.testing.assert_allclose(tta.sum(0), 1.0, atol=5e-3)
        assert np.abs(tta - plain).max() > 1e-3, f"{case}: mirroring changed nothing"
        assert np.mean(np.argmax(tta, 0) == tta_seg) > 0.99
        # same model and settings as the 130-case run: the same segmentation
        no_tta_seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "no_tta" / f"{case}.nii.gz")))
        np.testing.assert_array_equal(no_tta_seg, segs[case])
