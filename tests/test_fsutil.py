"""Atomic local writes: the rename happens only on success, failures leave nothing behind."""

from __future__ import annotations

import os

import pytest

from stages.fsutil import TMP_PREFIX, atomic_path, copy_atomic


def test_atomic_path_replaces_on_success_with_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target, suffix=".txt") as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(TMP_PREFIX) and tmp.name.endswith(".txt")
        assert not target.exists()
        tmp.write_text("new")
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_atomic_path_failure_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_copy_atomic_keeps_times_on_request_and_skips_the_same_file(tmp_path):
    src = tmp_path / "a.nii.gz"
    src.write_bytes(b"data")
    os.utime(src, (1_000_000, 1_000_000))
    copy_atomic(src, tmp_path / "plain" / "a.nii.gz")
    copy_atomic(src, tmp_path / "kept" / "a.nii.gz", keep_metadata=True)
    assert (tmp_path / "plain" / "a.nii.gz").read_bytes() == b"data"
    assert (tmp_path / "plain" / "a.nii.gz").stat().st_mtime != 1_000_000
    assert (tmp_path / "kept" / "a.nii.gz").stat().st_mtime == 1_000_000
    copy_atomic(src, tmp_path / "." / "a.nii.gz")  # the same file: left alone
    assert src.read_bytes() == b"data" and sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "kept", "plain"]
