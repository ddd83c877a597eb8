import os
import signal
import time

import numpy as np
import pytest
import torch

from stages import resources
from stages.errors import DatasetError
from stages.train.augmentation import default_augmentation_params, get_training_transforms
from stages.train.data import DataLoader3D, PreprocessedDataset
from stages.train.loss import deep_supervision_scales
from stages.train.workers import (
    AugmentationWorkerDiedError,
    AugmentationWorkerError,
    Augmenter,
    default_num_workers,
    seed_augmentation,
)
from tests.train.preprocessed_cases import write_cases

PATCH = (20, 24, 20)


@pytest.fixture()
def pipeline(tmp_path):
    write_cases(tmp_path, 4, shape=(18, 22, 20))
    p = default_augmentation_params(PATCH, 3)
    loader = DataLoader3D(PreprocessedDataset(tmp_path), p.loader_patch_size, PATCH, 2)
    tr = get_training_transforms(p, deep_supervision_scales=deep_supervision_scales([[2, 2, 2], [2, 2, 2]]))
    return tmp_path, loader, tr


def _take(aug, n):
    return [next(aug) for _ in range(n)]


def _same(a, b):
    return a["keys"] == b["keys"] and torch.equal(a["data"], b["data"]) and all(
        torch.equal(x, y) for x, y in zip(a["target"], b["target"]))


def test_in_process_equals_loader_plus_transform(pipeline):
    _, loader, tr = pipeline
    with Augmenter(loader, tr, num_workers=0, seeds=7) as aug:
        got = _take(aug, 2)
    seed_augmentation(7)
    expected = [tr(**next(loader)) for _ in range(2)]
    assert all(_same(a, b) for a, b in zip(got, expected))


def test_workers_are_reproducible_and_ordered(pipeline):
    _, loader, tr = pipeline
    with Augmenter(loader, tr, num_workers=2, seeds=[11, 12]) as aug:
        first = _take(aug, 4)
        assert len(set(aug.worker_pids)) == 2 and os.getpid() not in aug.worker_pids
    with Augmenter(loader, tr, num_workers=2, seeds=[11, 12]) as aug:
        second = _take(aug, 4)
    assert all(_same(a, b) for a, b in zip(first, second))
    assert not _same(first[0], first[1])  # the two workers are seeded differently
    # round-robin: batch 0 comes from worker 0, i.e. equals the in-process result with worker 0's seed
    with Augmenter(loader, tr, num_workers=0, seeds=11) as aug:
        assert _same(next(aug), first[0])
    assert tuple(first[0]["data"].shape) == (2, 1, *PATCH)


def test_killed_worker_raises_instead_of_hanging(pipeline):
    _, loader, tr = pipeline
    aug = Augmenter(loader, tr, num_workers=2, seeds=0)
    next(aug)
    victim = aug.worker_pids[1]
    os.kill(victim, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(AugmentationWorkerDiedError) as info:
        for _ in range(50):
            next(aug)
    assert time.monotonic() - start < 10
    msg = str(info.value)
    assert f"pid {victim}" in msg and "worker 1" in msg and "SIGKILL" in msg and "/dev/shm" in msg
    assert not any(p.is_alive() for p in aug._processes)  # the surviving worker was stopped too
    with pytest.raises(RuntimeError, match="closed"):
        next(aug)


def test_worker_exception_is_reraised_with_its_type(pipeline):
    folder, loader, tr = pipeline
    for f in folder.glob("*.npy"):
        f.write_bytes(b"garbage")
    with Augmenter(loader, tr, num_workers=2, seeds=0) as aug:
        with pytest.raises(DatasetError, match="cannot read") as info:
            next(aug)
    assert any("augmentation worker" in note for note in info.value.__notes__)


def test_other_worker_exceptions_are_wrapped(pipeline):
    _, loader, _ = pipeline

    def broken(**batch):
        raise ZeroDivisionError("boom")

    with Augmenter(loader, broken, num_workers=1) as aug:
        with pytest.raises(AugmentationWorkerError, match="ZeroDivisionError: boom"):
            next(aug)


def test_worker_count_honours_env_and_affinity(monkeypatch):
    monkeypatch.setattr(resources, "_cgroup_cpu_limit", lambda: None)
    monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert default_num_workers() == 3 and default_num_workers(validation=True) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert default_num_workers() == 12  # nnU-Net's default cap
    monkeypatch.setattr(resources, "_cgroup_cpu_limit", lambda: 5.5)
    assert default_num_workers() == 5
    monkeypatch.setenv("nnUNet_n_proc_DA", "7")
    assert default_num_workers() == 7 and default_num_workers(validation=True) == 3
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    assert default_num_workers() == 0 and default_num_workers(validation=True) == 0
    assert Augmenter(iter([]), None).num_workers == 0


def test_wire_format_roundtrip_and_truncation():
    import io

    from stages.train.workers import _encode, _plain_buffer, _read_message, _write_message

    obj = ("batch", {"data": torch.arange(24, dtype=torch.float32).reshape(2, 3, 4),
                     "target": [torch.ones(2, 1, 3), torch.zeros(1)], "keys": ["a", "b"],
                     "view": np.arange(20.0).reshape(4, 5)[:, ::2]})  # non-contiguous: pickled in-band
    r, w = os.pipe()
    with io.FileIO(r, "rb") as stream:
        parts = _encode(obj)
        _write_message(w, parts)
        kind, got = _read_message(stream, _plain_buffer)
        assert kind == "batch" and got["keys"] == ["a", "b"]
        assert torch.equal(got["data"], obj[1]["data"]) and torch.equal(got["target"][0], obj[1]["target"][0])
        np.testing.assert_array_equal(got["view"], obj[1]["view"])
        got["data"] += 1  # received arrays are writable
        # a writer that dies mid-message is seen as end-of-file, never as a blocked read
        raw = b"".join(bytes(memoryview(p).cast("B")) for p in parts)
        os.write(w, raw[: len(raw) // 2])
        os.close(w)
        with pytest.raises(EOFError):
            _read_message(stream, _plain_buffer)
