"""Input identities and digests: cheap, stable, and sensitive to content, parameters and membership."""

from __future__ import annotations

import os

import pytest

from stages import storage
from stages.errors import NotFoundError
from stages.stagekit import identity
from stages.stagekit.identity import identities_of, input_digest, input_identities, prefix_identities


def _tree(root: str) -> None:
    for name, text in (("a/x.txt", "x"), ("a/y.txt", "y"), ("a/deep/z.txt", "z"), ("b.txt", "b")):
        storage.write_text(storage.join(root, name), text)


def test_digest_is_stable_and_ignores_parameter_order(root):
    _tree(root)
    inputs = [storage.join(root, "a") + "/", storage.join(root, "b.txt")]
    first = input_digest({"p": 1, "q": [1, 2]}, inputs)
    assert first.startswith("sha256:")
    assert input_digest({"q": [1, 2], "p": 1}, list(reversed(inputs))) == first
    assert input_digest({"p": 2, "q": [1, 2]}, inputs) != first


@pytest.mark.parametrize("change", ["edit", "add", "remove"])
def test_digest_follows_the_content_of_a_prefix(root, change):
    _tree(root)
    inputs = [storage.join(root, "a")]  # no trailing '/': found to be a prefix
    before = input_digest({}, inputs)
    if change == "edit":
        storage.write_text(storage.join(root, "a/deep/z.txt"), "Z")
    elif change == "add":
        storage.write_text(storage.join(root, "a/new.txt"), "n")
    else:
        storage.delete(storage.join(root, "a/y.txt"))
    assert input_digest({}, inputs) != before


def test_rewriting_the_same_bytes_keeps_the_identity(root):
    _tree(root)
    inputs = [storage.join(root, "a/x.txt"), storage.join(root, "a/y.txt"), storage.join(root, "b.txt")]
    before = input_identities(inputs)
    storage.write_text(storage.join(root, "a/x.txt"), "x")
    assert input_identities(inputs) == before
    storage.write_text(storage.join(root, "a/x.txt"), "changed")
    after = dict(input_identities(inputs))
    assert after[inputs[0]] != dict(before)[inputs[0]] and after[inputs[1]] == dict(before)[inputs[1]]


def test_missing_inputs_are_named(root):
    _tree(root)
    with pytest.raises(NotFoundError, match="nothing-here"):
        input_digest({}, [storage.join(root, "nothing-here")])
    with pytest.raises(NotFoundError, match="absent.txt"):
        identities_of(root, ["b.txt", "absent.txt"])


def test_prefix_identities_are_relative_and_exclude_other_prefixes(root):
    _tree(root)
    storage.write_text(storage.join(root, "a2/other.txt"), "o")
    assert sorted(prefix_identities(storage.join(root, "a"))) == ["deep/z.txt", "x.txt", "y.txt"]
    assert prefix_identities(storage.join(root, "void")) == {}


def test_large_local_files_use_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setattr(identity, "SMALL_FILE", 4)
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(b"abc")
    big.write_bytes(b"0123456789")
    assert identity.local_file_identity(small).startswith("sha256:")
    first = identity.local_file_identity(big)
    assert first == f"stat:10:{big.stat().st_mtime_ns}"
    os.utime(big, ns=(big.stat().st_atime_ns, big.stat().st_mtime_ns + 1_000_000))
    assert identity.local_file_identity(big) != first


@pytest.mark.s3
def test_s3_objects_of_one_folder_cost_one_listing(s3_bucket, s3_calls):
    names = [f"imagesTr/case_{i:03d}_0000.nii.gz" for i in range(5)]
    for name in names:
        storage.write_text(storage.join(s3_bucket, "raw", name), name)
    s3_calls.clear()
    pairs = input_identities([storage.join(s3_bucket, "raw", n) for n in names])
    assert len(pairs) == 5 and all(ident.startswith("etag:") for _, ident in pairs)
    assert s3_calls == ["ListObjectsV2"]
