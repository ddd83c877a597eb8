import math

import numpy as np
import pytest
import torch
from batchgenerators.augmentations.utils import resize_segmentation

from stages.train.augmentation import (
    ApplyRandomBinaryOperatorTransform,
    DownsampleSegForDSTransform2,
    MaskTransform,
    RemoveRandomConnectedComponentFromOneHotEncodingTransform,
    default_augmentation_params,
    get_training_transforms,
    get_validation_transforms,
)
from stages.train.data import DataLoader2D, DataLoader3D, PreprocessedDataset
from stages.train.loss import deep_supervision_scales
from stages.train.workers import seed_augmentation
from tests.train.preprocessed_cases import write_cases

HIPPO_PATCH = (40, 56, 40)
HIPPO_POOLS = [[2, 2, 2], [2, 2, 2], [2, 2, 2]]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pre")
    write_cases(folder, 4, shape=(36, 50, 35))
    return folder


@pytest.fixture(scope="module")
def cascade_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("casc")
    write_cases(root / "pre", 3, shape=(24, 28, 26), n_channels=2, prev_stage_folder=root / "prev")
    return root


def _names(compose):
    return [type(t).__name__ for t in compose.transforms]


def test_default_params_3d():
    p = default_augmentation_params(HIPPO_PATCH, 3, False)
    assert p.loader_patch_size == (73, 80, 64)
    assert p.rotation_x == p.rotation_y == p.rotation_z == pytest.approx((-math.pi / 6, math.pi / 6))
    assert p.scale_range == (0.7, 1.4) and p.p_rot == p.p_scale == 0.2 and not p.do_elastic
    assert p.mirror_axes == (0, 1, 2) and p.gamma_range == (0.7, 1.5) and p.p_gamma == 0.3
    assert p.num_cached_per_thread == 2 and not p.random_crop and not p.dummy_2D


def test_default_params_dummy_2d_and_2d():
    p = default_augmentation_params((20, 192, 160), "3D", do_dummy_2D=True)
    assert p.dummy_2D and p.rotation_x == pytest.approx((-math.pi, math.pi)) and p.mirror_axes == (0, 1, 2)
    assert p.loader_patch_size == (20, int(192 / 0.85), int(192 / 0.85))
    square = default_augmentation_params((56, 40), 2, do_dummy_2D=True)
    assert not square.dummy_2D and square.rotation_x == pytest.approx((-math.pi, math.pi))
    assert square.mirror_axes == (0, 1) and square.rotation_y == (0.0, 0.0)
    elongated = default_augmentation_params((64, 160), "2d", False)  # 160 / 64 > 1.5
    assert elongated.rotation_x == pytest.approx((-math.pi / 12, math.pi / 12))


def test_deep_supervision_scales():
    assert deep_supervision_scales(HIPPO_POOLS) == [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]
    assert deep_supervision_scales([[1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]) == [
        [1, 1, 1], [1, 0.5, 0.5], [0.5, 0.25, 0.25], [0.25, 0.125, 0.125]]


def test_training_transform_order():
    ds = deep_supervision_scales(HIPPO_POOLS)
    p = default_augmentation_params(HIPPO_PATCH, 3)
    assert _names(get_training_transforms(p, deep_supervision_scales=ds, use_mask_for_norm={0: False})) == [
        "SegChannelSelectionTransform", "SpatialTransform", "GaussianNoiseTransform", "GaussianBlurTransform",
        "BrightnessMultiplicativeTransform", "ContrastAugmentationTransform", "SimulateLowResolutionTransform",
        "GammaTransform", "GammaTransform", "MirrorTransform", "MaskTransform", "RemoveLabelTransform",
        "RenameTransform", "DownsampleSegForDSTransform2", "NumpyToTensor"]
    dummy = default_augmentation_params((20, 64, 64), 3, True)
    names = _names(get_training_transforms(dummy, cascade_labels=[1, 2]))
    assert names[1:4] == ["Convert3DTo2DTransform", "SpatialTransform", "Convert2DTo3DTransform"]
    assert names[-6:] == ["RemoveLabelTransform", "MoveSegAsOneHotToData", "ApplyRandomBinaryOperatorTransform",
                          "RemoveRandomConnectedComponentFromOneHotEncodingTransform", "RenameTransform",
                          "NumpyToTensor"]
    assert _names(get_validation_transforms(deep_supervision_scales=ds)) == [
        "RemoveLabelTransform", "SegChannelSelectionTransform", "RenameTransform", "DownsampleSegForDSTransform2",
        "NumpyToTensor"]


def test_transform_parameters():
    p = default_augmentation_params(HIPPO_PATCH, 3)
    t = {type(x).__name__: x for x in get_training_transforms(p).transforms}
    sp = t["SpatialTransform"]
    assert tuple(sp.patch_size) == HIPPO_PATCH and sp.order_data == 3 and sp.order_seg == 1
    assert sp.border_mode_data == "constant" and sp.border_cval_seg == -1 and sp.random_crop is False
    assert sp.scale == (0.7, 1.4) and sp.p_rot_per_sample == 0.2 and sp.p_scale_per_sample == 0.2
    assert sp.do_elastic_deform is False and sp.angle_x == pytest.approx((-math.pi / 6, math.pi / 6))
    assert t["GaussianNoiseTransform"].p_per_sample == 0.1
    blur = t["GaussianBlurTransform"]
    assert blur.blur_sigma == (0.5, 1.0) and blur.p_per_sample == 0.2 and blur.p_per_channel == 0.5
    assert t["BrightnessMultiplicativeTransform"].multiplier_range == (0.75, 1.25)
    lowres = t["SimulateLowResolutionTransform"]
    assert (lowres.p_per_sample, lowres.p_per_channel, lowres.order_downsample, lowres.order_upsample) == (
        0.25, 0.5, 0, 3)
    gammas = [x for x in get_training_transforms(p).transforms if type(x).__name__ == "GammaTransform"]
    assert [(g.invert_image, g.p_per_sample) for g in gammas] == [(True, 0.1), (False, 0.3)]


def _batch_3d(folder, bs=3, seed=0, prev=None):
    p = default_augmentation_params(HIPPO_PATCH, 3)
    loader = DataLoader3D(PreprocessedDataset(folder, prev_stage_folder=prev), p.loader_patch_size, HIPPO_PATCH, bs)
    np.random.seed(seed)
    return p, loader.generate_train_batch()


def test_training_output_shapes_3d(cases):
    p, batch = _batch_3d(cases, bs=4)
    ds = deep_supervision_scales(HIPPO_POOLS)
    out = get_training_transforms(p, deep_supervision_scales=ds, use_mask_for_norm={0: True})(**batch)
    assert isinstance(out["data"], torch.Tensor) and out["data"].dtype == torch.float32
    assert tuple(out["data"].shape) == (4, 1, *HIPPO_PATCH)
    assert [tuple(t.shape) for t in out["target"]] == [(4, 1, 40, 56, 40), (4, 1, 20, 28, 20), (4, 1, 10, 14, 10)]
    assert all(t.dtype == torch.float32 for t in out["target"])
    assert set(torch.unique(out["target"][0]).tolist()) <= {0.0, 1.0, 2.0}  # -1 removed, labels kept
    assert "seg" not in out


def test_validation_output_shapes(cases):
    p = default_augmentation_params(HIPPO_PATCH, 3)
    loader = DataLoader3D(PreprocessedDataset(cases), HIPPO_PATCH, HIPPO_PATCH, 2)
    batch = next(loader)
    seg = batch["seg"].copy()
    out = get_validation_transforms(deep_supervision_scales=deep_supervision_scales(HIPPO_POOLS))(**batch)
    assert [tuple(t.shape) for t in out["target"]][1:] == [(2, 1, 20, 28, 20), (2, 1, 10, 14, 10)]
    np.testing.assert_array_equal(out["target"][0].numpy(), np.clip(seg, 0, None))  # no augmentation
    assert tuple(out["data"].shape) == (2, 1, *p.patch_size)


def test_2d_and_dummy_2d_output_shapes(cases):
    p2 = default_augmentation_params((48, 40), 2)
    loader = DataLoader2D(PreprocessedDataset(cases), p2.loader_patch_size, p2.patch_size, 5)
    out = get_training_transforms(p2, deep_supervision_scales=deep_supervision_scales([[2, 2], [2, 2]]))(
        **next(loader))
    assert tuple(out["data"].shape) == (5, 1, 48, 40)
    assert [tuple(t.shape) for t in out["target"]] == [(5, 1, 48, 40), (5, 1, 24, 20)]

    pd = default_augmentation_params((12, 48, 40), 3, do_dummy_2D=True)
    assert pd.loader_patch_size[0] == 12
    loader = DataLoader3D(PreprocessedDataset(cases), pd.loader_patch_size, pd.patch_size, 2)
    out = get_training_transforms(pd, deep_supervision_scales=deep_supervision_scales([[1, 2, 2], [2, 2, 2]]))(
        **next(loader))
    assert tuple(out["data"].shape) == (2, 1, 12, 48, 40)
    assert [tuple(t.shape) for t in out["target"]] == [(2, 1, 12, 48, 40), (2, 1, 12, 24, 20)]
    assert set(out) == {"data", "target", "keys"}


def test_augmentation_is_deterministic_with_a_seed(cases):
    p = default_augmentation_params(HIPPO_PATCH, 3)
    tr = get_training_transforms(p, deep_supervision_scales=deep_supervision_scales(HIPPO_POOLS))
    loader = DataLoader3D(PreprocessedDataset(cases), p.loader_patch_size, HIPPO_PATCH, 3)

    def run(seed):
        seed_augmentation(seed)
        return [tr(**loader.generate_train_batch()) for _ in range(2)]

    a, b, c = run(5), run(5), run(6)
    for x, y in zip(a, b):
        assert torch.equal(x["data"], y["data"]) and all(torch.equal(s, t) for s, t in zip(x["target"], y["target"]))
    assert not torch.equal(a[0]["data"], c[0]["data"])


def test_ds_downsampling_matches_resize_segmentation():
    rng = np.random.RandomState(0)
    seg = rng.randint(0, 3, size=(2, 1, 37, 50, 35)).astype(np.float32)
    scales = [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.5, 0.25], [1 / 3, 0.2, 0.75]]
    out = DownsampleSegForDSTransform2(scales)(target=seg)["target"]
    assert out[0] is seg
    for s, o in zip(scales[1:], out[1:]):
        shape = np.round(np.array(seg.shape[2:]) * s).astype(int)
        for b in range(2):
            np.testing.assert_array_equal(o[b, 0], resize_segmentation(seg[b, 0], tuple(shape), 0))


def test_mask_transform_only_touches_masked_channels():
    data = np.ones((2, 2, 4, 4, 4), np.float32)
    seg = np.zeros((2, 1, 4, 4, 4), np.float32)
    seg[:, 0, 0] = -1
    out = MaskTransform({0: True, 1: False})(data=data, seg=seg)
    assert np.all(out["data"][:, 0, 0] == 0) and np.all(out["data"][:, 0, 1:] == 1)
    assert np.all(out["data"][:, 1] == 1)


def test_cascade_pipeline(cascade_cases):
    prev = cascade_cases / "prev"
    p, batch = _batch_3d(cascade_cases / "pre", bs=3, prev=prev)
    assert batch["seg"].shape[1] == 2
    out = get_training_transforms(p, cascade_labels=[1, 2], use_mask_for_norm={0: False, 1: False})(**batch)
    assert tuple(out["data"].shape) == (3, 2 + 2, *HIPPO_PATCH)
    onehot = out["data"][:, 2:]
    assert set(torch.unique(onehot).tolist()) <= {0.0, 1.0} and onehot.sum(1).max() <= 1
    assert tuple(out["target"].shape) == (3, 1, *HIPPO_PATCH)

    _, batch = _batch_3d(cascade_cases / "pre", bs=2, prev=prev)
    prev_seg = batch["seg"][:, 1].copy()
    val = get_validation_transforms(cascade_labels=[1, 2])(**batch)
    np.testing.assert_array_equal(val["data"][:, 2].numpy(), (prev_seg == 1).astype(np.float32))
    np.testing.assert_array_equal(val["data"][:, 3].numpy(), (prev_seg == 2).astype(np.float32))


def _two_blobs():
    data = np.zeros((1, 3, 20, 20, 20), np.float32)
    data[0, 1, 2:6, 2:6, 2:6] = 1  # small component of label 1
    data[0, 1, 10:18, 10:18, 10:18] = 1
    data[0, 2, 8:10, 8:10, 8:10] = 1
    return data


def test_binary_operator_keeps_one_hot():
    np.random.seed(0)
    t = ApplyRandomBinaryOperatorTransform([1, 2], p_per_sample=1.0, strel_size=(1, 3))
    changed = 0
    for _ in range(6):
        data = _two_blobs()
        out = t(data=data.copy())["data"]
        assert out[0, 1:].sum(0).max() <= 1
        changed += not np.array_equal(out, data)
    assert changed > 0


def test_connected_component_removal_is_a_no_op_with_v1_arguments():
    np.random.seed(0)
    v1 = RemoveRandomConnectedComponentFromOneHotEncodingTransform(
        [1, 2], p_per_sample=1.0, fill_with_other_class_p=0.15, dont_do_if_covers_more_than_x_percent=0.0)
    data = _two_blobs()
    np.testing.assert_array_equal(v1(data=data.copy())["data"], data)
    fixed = RemoveRandomConnectedComponentFromOneHotEncodingTransform(
        [1, 2], p_per_sample=1.0, fill_with_other_class_p=0.0, dont_do_if_covers_more_than_x_percent=0.15)
    out = fixed(data=data.copy())["data"]
    assert out.sum() < data.sum()
