import math

import numpy as np
import pytest

from stages.errors import DatasetError
from stages.train.data import (
    DataLoader2D,
    DataLoader3D,
    PreprocessedDataset,
    get_patch_size,
    num_forced_foreground,
)
from tests.train.preprocessed_cases import write_case, write_cases

HIPPO_PATCH = (40, 56, 40)
HIPPO_SHAPE = (36, 50, 35)


@pytest.fixture(scope="module")
def hippo_like(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pre")
    write_cases(folder, 6, shape=HIPPO_SHAPE)
    return folder


@pytest.fixture(scope="module")
def sparse_fg(tmp_path_factory):
    """Large volumes with a small foreground box: random patches often miss it."""
    folder = tmp_path_factory.mktemp("sparse")
    for i in range(4):
        write_case(folder, f"s{i}", shape=(40, 64, 64), seed=i,
                   fg_box=(slice(30, 34), slice(50, 54), slice(4 + i, 8 + i)))
    return folder


def _has_fg(seg_patch):
    return bool((seg_patch > 0).any())


@pytest.mark.parametrize("bs,forced", [(2, 1), (9, 3), (7, 2), (3, 1), (1, 0), (12, 4)])
def test_number_of_forced_samples(bs, forced):
    assert num_forced_foreground(bs, 0.33) == forced


@pytest.mark.parametrize("bs", [2, 7, 9])
def test_forced_samples_contain_foreground(sparse_fg, bs):
    ds = PreprocessedDataset(sparse_fg)
    loader = DataLoader3D(ds, (24, 24, 24), (24, 24, 24), bs)
    forced = num_forced_foreground(bs)
    assert [loader.get_do_oversample(j) for j in range(bs)] == [False] * (bs - forced) + [True] * forced
    np.random.seed(3)
    random_without_fg = 0
    for _ in range(15):
        batch = loader.generate_train_batch()
        for j in range(bs):
            if j >= bs - forced:
                assert _has_fg(batch["seg"][j]), f"forced sample {j} lacks foreground"
            else:
                random_without_fg += not _has_fg(batch["seg"][j])
    assert random_without_fg > 0  # the check above is not trivially true


def test_3d_batch_shapes_and_dtypes(hippo_like):
    ds = PreprocessedDataset(hippo_like)
    loader_patch = get_patch_size(HIPPO_PATCH, (-math.pi / 6, math.pi / 6), (-math.pi / 6, math.pi / 6),
                                  (-math.pi / 6, math.pi / 6), (0.85, 1.25))
    loader = DataLoader3D(ds, loader_patch, HIPPO_PATCH, 7)
    batch = next(loader)
    assert batch["data"].shape == (7, 1, *loader_patch) and batch["data"].dtype == np.float32
    assert batch["seg"].shape == (7, 1, *loader_patch) and batch["seg"].dtype == np.float32
    assert len(batch["keys"]) == 7 and set(batch["keys"]) <= set(ds.case_ids)
    # the enlarged patch is larger than the image: there is padding (-1 in the seg)
    assert (batch["seg"] == -1).any()
    val_loader = DataLoader3D(ds, HIPPO_PATCH, HIPPO_PATCH, 2)
    assert next(val_loader)["data"].shape == (2, 1, *HIPPO_PATCH)


def test_padding_values_and_content(tmp_path):
    case = write_case(tmp_path, "c", shape=(10, 12, 14), n_channels=2, outside_border=0)
    ds = PreprocessedDataset(tmp_path)
    loader = DataLoader3D(ds, (20, 20, 20), (16, 16, 16), 1, oversample_foreground_percent=0)
    np.random.seed(0)
    for _ in range(5):
        batch = loader.generate_train_batch()
        seg = batch["seg"][0, 0]
        inside = seg >= 0  # the case has no -1 voxels itself: -1 marks exactly the padding
        assert inside.sum() == 10 * 12 * 14  # the whole image fits into the patch
        assert np.all(batch["data"][0][:, ~inside] == 0)
        np.testing.assert_array_equal(batch["data"][0][:, inside], case["data"].reshape(2, -1))
        np.testing.assert_array_equal(seg[inside], case["seg"].reshape(-1))


def test_lower_corner_bounds_follow_the_spec(hippo_like):
    loader = DataLoader3D(PreprocessedDataset(hippo_like), (73, 80, 64), HIPPO_PATCH, 2)
    lbs, ubs = loader._bounds(HIPPO_SHAPE)
    # axis 0: pad 33, but 36 + 33 < 73 -> pad 37; lb = -37 // 2 = -19, ub = 36 + 18 + 1 - 73 = -18
    # axis 1: pad 24, 50 + 24 < 80 -> pad 30; lb = -15, ub = 50 + 15 + 0 - 80 = -15
    # axis 2: pad 24, 35 + 24 < 64 -> pad 29; lb = -15, ub = 35 + 14 + 1 - 64 = -14
    assert (lbs, ubs) == ([-19, -15, -15], [-18, -15, -14])
    big = DataLoader3D(PreprocessedDataset(hippo_like), (48, 48, 48), (40, 40, 40), 2)
    assert big._bounds((100, 101, 60)) == ([-4, -4, -4], [56, 57, 16])


def test_forced_patch_is_centred_on_a_stored_voxel(tmp_path):
    write_case(tmp_path, "one", shape=(30, 30, 30), fg_box=(slice(20, 21), slice(9, 10), slice(15, 16)),
               n_classes=2)
    loader = DataLoader3D(PreprocessedDataset(tmp_path), (12, 12, 12), (12, 12, 12), 2,
                          oversample_foreground_percent=1.0)
    batch = next(loader)
    for j in range(2):
        assert batch["seg"][j, 0, 6, 6, 6] == 1  # voxel (20, 9, 15) lands at patch_size // 2
        assert (batch["seg"][j, 0] == 1).sum() == 1


def test_case_without_foreground_falls_back_to_random(tmp_path):
    write_case(tmp_path, "empty", shape=(20, 20, 20), fg_box=())
    loader = DataLoader3D(PreprocessedDataset(tmp_path), (8, 8, 8), (8, 8, 8), 3, oversample_foreground_percent=1)
    batch = next(loader)
    assert batch["data"].shape == (3, 1, 8, 8, 8) and not _has_fg(batch["seg"])


def test_2d_loader_shapes_and_forced_slices(sparse_fg):
    ds = PreprocessedDataset(sparse_fg)
    loader = DataLoader2D(ds, (40, 40), (32, 32), 9)
    np.random.seed(1)
    batch = loader.generate_train_batch()
    assert batch["data"].shape == (9, 1, 40, 40) and batch["seg"].shape == (9, 1, 40, 40)
    for _ in range(10):
        batch = loader.generate_train_batch()
        for j in range(6, 9):
            assert _has_fg(batch["seg"][j])
    with pytest.raises(Exception, match="2D patch"):
        DataLoader2D(ds, (40, 40, 40), (32, 32, 32), 2)


def test_cascade_previous_stage_channel(tmp_path):
    prev = tmp_path / "prev"
    write_cases(tmp_path / "pre", 3, shape=(20, 22, 24), prev_stage_folder=prev)
    ds = PreprocessedDataset(tmp_path / "pre", prev_stage_folder=prev)
    loader = DataLoader3D(ds, (28, 28, 28), (20, 20, 20), 4)
    np.random.seed(0)
    batch = next(loader)
    assert batch["seg"].shape == (4, 2, 28, 28, 28)
    seg, prev_seg = batch["seg"][:, 0], batch["seg"][:, 1]
    # the previous stage equals the clipped seg here; outside the image it is padded with 0, the seg with -1
    np.testing.assert_array_equal(prev_seg, np.clip(seg, 0, None))
    assert (seg == -1).any() and prev_seg.min() == 0
    (prev / "case_001_segFromPrevStage.npy").unlink()
    with pytest.raises(DatasetError, match="case_001.*prev stage missing"):
        PreprocessedDataset(tmp_path / "pre", prev_stage_folder=prev)


def test_missing_files_are_reported_per_case(tmp_path):
    write_cases(tmp_path, 3, shape=(10, 10, 10))
    (tmp_path / "case_002.npy").unlink()
    with pytest.raises(DatasetError, match="case_002: missing case_002.npy"):
        PreprocessedDataset(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        PreprocessedDataset(tmp_path / "nope")


def test_batches_are_reproducible_with_a_seed(hippo_like):
    loader = DataLoader3D(PreprocessedDataset(hippo_like), (48, 64, 48), HIPPO_PATCH, 5)
    np.random.seed(42)
    a = [loader.generate_train_batch() for _ in range(3)]
    np.random.seed(42)
    b = [loader.generate_train_batch() for _ in range(3)]
    for x, y in zip(a, b):
        assert x["keys"] == y["keys"]
        np.testing.assert_array_equal(x["data"], y["data"])
        np.testing.assert_array_equal(x["seg"], y["seg"])
    np.random.seed(43)
    assert not np.array_equal(loader.generate_train_batch()["data"], a[0]["data"])


def _rot_extent_3d(p, axis, a):
    """|R p| for a rotation by ``a`` about one axis, with batchgenerators' row-vector convention p @ R."""
    c, s = math.cos(a), math.sin(a)
    z, y, x = p
    if axis == 0:
        return (abs(z), abs(y * c + x * s), abs(-y * s + x * c))
    if axis == 1:
        return (abs(z * c - x * s), abs(y), abs(z * s + x * c))
    return (abs(z * c + y * s), abs(-z * s + y * c), abs(x))


def test_get_patch_size_hippocampus():
    rot = math.radians(30)
    extents = [HIPPO_PATCH] + [_rot_extent_3d(HIPPO_PATCH, ax, rot) for ax in range(3)]
    expected = tuple(int(max(e[d] for e in extents) / 0.85) for d in range(3))
    got = get_patch_size(HIPPO_PATCH, (-rot, rot), (-rot, rot), (-rot, rot), (0.85, 1.25))
    assert got == expected == (73, 80, 64)
    # the (0.7, 1.4) range the transform uses would give a larger patch: the quirk matters
    assert get_patch_size(HIPPO_PATCH, (-rot, rot), (-rot, rot), (-rot, rot), (0.7, 1.4)) != expected


def test_get_patch_size_2d_dummy_2d_and_angle_cap():
    half_turn = (-math.pi, math.pi)
    # 2D: angles are capped at 90 degrees, where the extents swap: both axes become max(patch) / 0.85
    assert get_patch_size((56, 40), half_turn, 0, 0, (0.85, 1.25)) == (int(56 / 0.85), int(56 / 0.85))
    # dummy 2D: axis 0 keeps its size, in-plane axes follow the 2D rule
    assert get_patch_size((20, 56, 40), half_turn, (-0.5, 0.5), (-0.5, 0.5), (0.85, 1.25), dummy_2d=True) == (
        20, int(56 / 0.85), int(56 / 0.85))
    # no rotation: only the zoom enlarges
    assert get_patch_size((40, 56, 40), 0, 0, 0, (0.85, 1.25)) == (47, 65, 47)
