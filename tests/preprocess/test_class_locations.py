"""Foreground-location sampling (spec §4.5)."""

from __future__ import annotations

import math

import numpy as np

from stages.preprocess.class_locations import num_locations, sample_class_locations


def test_number_of_locations_rule():
    assert num_locations(1) == 1
    assert num_locations(500) == 500
    assert num_locations(10000) == 10000
    assert num_locations(50000) == 10000
    assert num_locations(2_000_000) == 20000
    assert num_locations(1_000_001) == math.ceil(10000.01)


def _seg():
    seg = np.zeros((40, 60, 60), np.int8)
    seg[5:35, 5:55, 5:55] = 1  # 75,000 voxels -> 10,000 samples
    seg[10:12, 10:20, 10:20] = 2  # 200 voxels -> all of them
    seg[0, 0, 0] = -1
    return seg


def test_counts_coordinates_and_absent_classes():
    seg = _seg()
    locs = sample_class_locations(seg, [1, 2, 3])
    assert locs[1].shape == (10000, 3) and locs[2].shape == (200, 3)
    assert locs[3].shape == (0, 3)
    for c in (1, 2):
        assert np.all(seg[tuple(locs[c].T)] == c)
        assert len({tuple(p) for p in locs[c]}) == len(locs[c])  # without replacement


def test_deterministic_and_equal_to_randomstate_1234():
    seg = _seg()
    a = sample_class_locations(seg, [1, 2])
    b = sample_class_locations(seg, [1, 2])
    for c in (1, 2):
        np.testing.assert_array_equal(a[c], b[c])
    # the documented stream: one RandomState(1234) per case, classes in order
    rnd = np.random.RandomState(1234)
    all1 = np.argwhere(seg == 1)
    np.testing.assert_array_equal(a[1], all1[rnd.choice(len(all1), 10000, replace=False)])
    all2 = np.argwhere(seg == 2)
    np.testing.assert_array_equal(a[2], all2[rnd.choice(len(all2), 200, replace=False)])


def test_class_order_changes_the_stream():
    seg = _seg()
    a = sample_class_locations(seg, [1, 2])
    b = sample_class_locations(seg, [2, 1])
    assert not np.array_equal(a[1], b[1])
