"""Cross-validation splits of the training cases (spec §6.2, ``nnUNetTrainerV2.do_split``).

The five folds are those of scikit-learn's ``KFold(5, shuffle=True, random_state=12345)`` over the sorted case
ids, computed here without scikit-learn. They are stored once per preprocessed dataset as
``splits_final.json`` so that every fold (possibly trained on different machines) sees the same partition and
users can provide their own. Fold ``"all"`` trains and validates on every case; a fold index beyond the stored
splits draws a random 80:20 partition seeded with ``12345 + fold``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from stages.documents import Document
from stages.errors import BadInputError

SPLITS_FILENAME = "splits_final.json"
DEFAULT_N_SPLITS = 5
DEFAULT_SEED = 12345


class Split(BaseModel):
    """One fold: the cases to train on and the cases to validate on."""

    model_config = ConfigDict(extra="forbid")

    train: list[str]
    val: list[str]


class Splits(Document):
    """The cross-validation folds of a dataset (``splits_final.json``)."""

    KIND = "splits"
    SCHEMA_VERSION = 1

    splits: list[Split]

    @classmethod
    def upgrade_legacy(cls, raw: Any) -> Any:
        """A plain JSON list of ``{"train": [...], "val": [...]}`` (nnU-Net v2's format) becomes a document."""
        if isinstance(raw, list):
            return {"schema_version": cls.SCHEMA_VERSION, "splits": raw}
        return raw


def make_splits(case_ids: Iterable[str], n_splits: int = DEFAULT_N_SPLITS, seed: int = DEFAULT_SEED) -> Splits:
    """K-fold partition of the sorted case ids, identical to ``KFold(n_splits, shuffle=True, random_state=seed)``.

    Args:
        case_ids: Identifiers of all training cases (order irrelevant; duplicates are an error).
        n_splits: Number of folds.
        seed: Seed of the ``RandomState`` that shuffles the case indices.

    Returns:
        The splits; within each fold both lists are sorted.

    Raises:
        BadInputError: Fewer cases than folds, or duplicate case ids.
    """
    keys = sorted(case_ids)
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        raise BadInputError(f"duplicate case ids cannot be split into folds: {dupes}")
    if n_splits < 2:
        raise BadInputError(f"n_splits must be at least 2, got {n_splits}")
    n = len(keys)
    if n < n_splits:
        raise BadInputError(f"{n} case(s) cannot be split into {n_splits} folds (need at least {n_splits})")
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    fold_sizes = np.full(n_splits, n // n_splits, dtype=int)
    fold_sizes[: n % n_splits] += 1
    folds = []
    start = 0
    for size in fold_sizes:
        in_val = np.zeros(n, dtype=bool)
        in_val[order[start : start + size]] = True
        start += size
        folds.append(
            Split(train=[keys[i] for i in np.flatnonzero(~in_val)], val=[keys[i] for i in np.flatnonzero(in_val)])
        )
    return Splits(splits=folds)


def read_splits(path: str | os.PathLike) -> Splits:
    """Read a splits file: our typed document, or a plain JSON list of ``{"train": [...], "val": [...]}``.

    The plain list is nnU-Net v2's ``splits_final.json`` format, accepted so that users can bring their own.

    Raises:
        BadInputError: The file is missing or is neither format.
    """
    return Splits.load(path)


def load_or_create_splits(
    path: str | os.PathLike,
    case_ids: Sequence[str] | None = None,
    n_splits: int = DEFAULT_N_SPLITS,
    seed: int = DEFAULT_SEED,
) -> Splits:
    """Read ``path`` if it exists, else compute the default splits of ``case_ids`` and store them there.

    Args:
        path: The splits file (usually ``<preprocessed task>/splits_final.json``).
        case_ids: All training cases. Required to create the file; when given, an existing file is checked to
            name only these cases.
        n_splits: Number of folds when creating.
        seed: Shuffle seed when creating.

    Raises:
        BadInputError: The file is missing and no cases were given, or it names cases the dataset lacks.
    """
    path = Path(path)
    if path.is_file():
        splits = read_splits(path)
        if case_ids is not None:
            known = set(case_ids)
            unknown = sorted({c for s in splits.splits for c in (*s.train, *s.val)} - known)
            if unknown:
                raise BadInputError(
                    f"{path}: the splits name {len(unknown)} case(s) that are not in the dataset: {unknown[:10]}"
                )
        return splits
    if case_ids is None:
        raise BadInputError(f"{path}: splits file not found and no case list given to create it")
    splits = make_splits(case_ids, n_splits=n_splits, seed=seed)
    splits.save(path)
    return splits


def fold_cases(
    splits: Splits, fold: int | str, case_ids: Sequence[str] | None = None, seed: int = DEFAULT_SEED
) -> tuple[list[str], list[str]]:
    """Training and validation cases of a fold, both sorted.

    Args:
        splits: The dataset's splits.
        fold: A fold index, or ``"all"`` (train = validation = every case).
        case_ids: All cases of the dataset, for ``"all"`` and for folds beyond the stored splits; defaults to
            the union of the cases named in ``splits``.
        seed: Base seed of the random 80:20 split used for ``fold >= len(splits)`` (seeded ``seed + fold``).

    Raises:
        BadInputError: A negative or non-numeric fold.
    """
    keys = sorted(set(case_ids) if case_ids is not None else {c for s in splits.splits for c in (*s.train, *s.val)})
    if isinstance(fold, str):
        if fold == "all":
            return list(keys), list(keys)
        if not fold.isdigit():
            raise BadInputError(f"fold must be an integer >= 0 or 'all', got {fold!r}")
        fold = int(fold)
    if fold < 0:
        raise BadInputError(f"fold must be an integer >= 0 or 'all', got {fold}")
    if fold < len(splits.splits):
        return sorted(splits.splits[fold].train), sorted(splits.splits[fold].val)
    rnd = np.random.RandomState(seed=seed + fold)
    idx_tr = rnd.choice(len(keys), int(len(keys) * 0.8), replace=False)
    chosen = set(int(i) for i in idx_tr)
    return sorted(keys[i] for i in chosen), sorted(keys[i] for i in range(len(keys)) if i not in chosen)
