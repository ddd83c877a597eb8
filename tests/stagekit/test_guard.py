"""The raw-data guard: folder semantics on S3 and local paths, configuration from flag and environment."""

from __future__ import annotations

import os

import pytest

from stages.errors import BadInputError
from stages.stagekit.guard import WriteGuard, is_under, protected_prefixes


@pytest.mark.parametrize(
    ("uri", "prefix", "expected"),
    [
        ("s3://b/raw/Task04/x.nii.gz", "s3://b/raw", True),
        ("s3://b/raw", "s3://b/raw/", True),
        ("s3://b/raw2/x", "s3://b/raw", False),
        ("s3://other/raw/x", "s3://b/raw", False),
        ("s3://b/raw/x", "/b/raw", False),
    ],
)
def test_is_under_s3(uri, prefix, expected):
    assert is_under(uri, prefix) is expected


def test_is_under_local_resolves_dots_and_symlinks(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (tmp_path / "alias").symlink_to(raw)
    assert is_under(str(tmp_path / "work" / ".." / "raw" / "x"), str(raw))
    assert is_under(f"file://{tmp_path}/alias/x", str(raw))
    assert not is_under(str(tmp_path / "raw2" / "x"), str(raw))
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert is_under("raw/sub/file", str(raw))
    finally:
        os.chdir(cwd)


def test_guard_message_names_the_uri_and_prefix():
    guard = WriteGuard(["s3://b/raw"])
    assert guard.check("s3://b/work/x") == "s3://b/work/x"
    with pytest.raises(BadInputError, match=r"s3://b/raw/x.*raw-data prefix s3://b/raw"):
        guard.check("s3://b/raw/x")


def test_protected_prefixes_from_flag_env_and_dataset(monkeypatch):
    monkeypatch.setenv("NNKUBE_RAW_PREFIX", "s3://b/raw, s3://b/more")
    assert protected_prefixes(None, ["s3://b/ds", None]) == ["s3://b/raw", "s3://b/more", "s3://b/ds"]
    assert protected_prefixes("s3://b/flag", ["s3://b/ds"]) == ["s3://b/flag", "s3://b/ds"]
    monkeypatch.delenv("NNKUBE_RAW_PREFIX")
    assert protected_prefixes() == []
