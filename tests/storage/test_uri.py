"""URI helpers (pure string functions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages import storage
from stages.errors import BadInputError
from stages.storage.uri import split_s3, to_local_path


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("s3://b", ("k",), "s3://b/k"),
        ("s3://b/", ("/a/", "b.txt"), "s3://b/a/b.txt"),
        ("s3://b/x", ("", "y/z"), "s3://b/x/y/z"),
        ("s3://b/x", (), "s3://b/x"),
        ("/tmp/a", ("b", "/c"), "/tmp/a/b/c"),
        (Path("/tmp/a"), ("b",), "/tmp/a/b"),
        ("rel", ("x",), "rel/x"),
    ],
)
def test_join(base, parts, expected):
    assert storage.join(base, *parts) == expected


@pytest.mark.parametrize(
    ("uri", "up", "name"),
    [
        ("s3://b/a/k.txt", "s3://b/a", "k.txt"),
        ("s3://b/a/", "s3://b", "a"),
        ("s3://b/a", "s3://b", "a"),
        ("s3://b", "s3://b", "b"),
        ("/tmp/a/k.txt", "/tmp/a", "k.txt"),
        ("/tmp/a/", "/tmp", "a"),
        ("k.txt", ".", "k.txt"),
    ],
)
def test_parent_and_basename(uri, up, name):
    assert storage.parent(uri) == up
    assert storage.basename(uri) == name


def test_is_s3_and_split():
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/s3://b") and not storage.is_s3(Path("/x"))
    assert split_s3("s3://bucket/a/b") == ("bucket", "a/b")
    assert split_s3("s3://bucket") == ("bucket", "")
    with pytest.raises(BadInputError, match="no bucket"):
        split_s3("s3:///key")
    with pytest.raises(BadInputError, match="no bucket"):
        storage.join("s3://", "k")


def test_local_path_accepts_file_scheme_and_rejects_s3():
    assert to_local_path("file:///tmp/x") == "/tmp/x"
    with pytest.raises(BadInputError, match="expected a local path"):
        to_local_path("s3://b/k")
    with pytest.raises(BadInputError, match="expected a local path"):
        storage.upload_file("s3://b/k", "s3://b/other")
