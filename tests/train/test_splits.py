import json
import random

import numpy as np
import pytest

from stages.errors import BadInputError
from stages.train.splits import Splits, fold_cases, load_or_create_splits, make_splits, read_splits


def _ids(n):
    ids = [f"hippocampus_{i:03d}" for i in range(n)]
    random.Random(n).shuffle(ids)  # input order must not matter
    return ids


@pytest.mark.parametrize("n", [5, 7, 23, 208])
def test_make_splits_equals_sklearn_kfold(n):
    sklearn = pytest.importorskip("sklearn.model_selection")
    ids = _ids(n)
    keys = np.sort(ids)
    expected = [
        (list(keys[tr]), list(keys[va]))
        for tr, va in sklearn.KFold(n_splits=5, shuffle=True, random_state=12345).split(keys)
    ]
    got = [(s.train, s.val) for s in make_splits(ids).splits]
    assert got == expected


def test_make_splits_partitions_the_cases():
    ids = _ids(23)
    splits = make_splits(ids)
    vals = [c for s in splits.splits for c in s.val]
    assert sorted(vals) == sorted(ids)  # every case validated exactly once
    assert [len(s.val) for s in splits.splits] == [5, 5, 5, 4, 4]
    for s in splits.splits:
        assert s.train == sorted(s.train) and s.val == sorted(s.val)
        assert set(s.train).isdisjoint(s.val) and len(s.train) + len(s.val) == 23
    assert make_splits(ids, seed=1).splits != splits.splits


def test_make_splits_rejects_too_few_and_duplicate_cases():
    with pytest.raises(BadInputError, match="4 case"):
        make_splits(_ids(4))
    with pytest.raises(BadInputError, match="duplicate"):
        make_splits(["a", "b", "c", "d", "e", "a"])


def test_load_or_create_writes_then_reuses(tmp_path):
    path = tmp_path / "splits_final.json"
    ids = _ids(10)
    created = load_or_create_splits(path, ids)
    assert path.is_file()
    assert Splits.load(path) == created
    # a user-edited file is used as it is, not recomputed
    edited = Splits(splits=[{"train": sorted(ids)[2:], "val": sorted(ids)[:2]}])
    edited.save(path)
    assert load_or_create_splits(path, ids) == edited


def test_plain_list_format_is_accepted(tmp_path):
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps([{"train": ["a", "b"], "val": ["c"]}, {"train": ["c"], "val": ["a", "b"]}]))
    splits = read_splits(path)
    assert fold_cases(splits, 1) == (["c"], ["a", "b"])


def test_load_rejects_unknown_cases_and_missing_file(tmp_path):
    path = tmp_path / "splits_final.json"
    load_or_create_splits(path, _ids(10))
    with pytest.raises(BadInputError, match="not in the dataset"):
        load_or_create_splits(path, _ids(10)[:8])
    with pytest.raises(BadInputError, match="no case list"):
        load_or_create_splits(tmp_path / "other.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BadInputError, match="bad.json"):
        read_splits(tmp_path / "bad.json")


def test_fold_cases_index_all_and_beyond():
    ids = _ids(20)
    splits = make_splits(ids)
    tr, va = fold_cases(splits, 2)
    assert (tr, va) == (splits.splits[2].train, splits.splits[2].val)
    assert fold_cases(splits, "all") == (sorted(ids), sorted(ids))
    assert fold_cases(splits, "3") == fold_cases(splits, 3)

    # fold >= number of splits: random 80:20 with RandomState(12345 + fold) over the sorted keys
    keys = sorted(ids)
    idx = np.random.RandomState(12345 + 7).choice(20, 16, replace=False)
    tr7, va7 = fold_cases(splits, 7)
    assert tr7 == sorted(keys[i] for i in idx)
    assert va7 == sorted(set(keys) - set(tr7)) and len(va7) == 4
    assert fold_cases(splits, 8) != (tr7, va7)

    with pytest.raises(BadInputError):
        fold_cases(splits, -1)
    with pytest.raises(BadInputError):
        fold_cases(splits, "first")
