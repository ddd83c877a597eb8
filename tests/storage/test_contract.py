"""One behavioural contract, run on both backends (local folder and a real S3 server)."""

from __future__ import annotations

import os

import pytest

from stages import storage
from stages.errors import BadInputError, NotFoundError


def _write_tree(folder, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


TREE = {
    "a.txt": b"alpha",
    "sub/b.bin": bytes(range(256)) * 10,
    "sub/deeper/c.json": b'{"c": 3}',
    "empty.dat": b"",
}


def test_bytes_and_text_round_trip_and_overwrite(root):
    uri = storage.join(root, "x", "y", "data.bin")
    storage.write_bytes(uri, b"\x00first")
    assert storage.read_bytes(uri) == b"\x00first"
    storage.write_bytes(uri, b"second, longer content")
    assert storage.read_bytes(uri) == b"second, longer content"
    text_uri = storage.join(root, "note.txt")
    storage.write_text(text_uri, "héllo wörld ✓")
    assert storage.read_text(text_uri) == "héllo wörld ✓"
    empty = storage.join(root, "empty")
    storage.write_bytes(empty, b"")
    assert storage.read_bytes(empty) == b""


def test_read_text_rejects_undecodable_bytes(root):
    uri = storage.join(root, "latin1.txt")
    storage.write_bytes(uri, "café".encode("latin-1"))
    with pytest.raises(BadInputError, match="not valid utf-8"):
        storage.read_text(uri)


def test_file_round_trip_creates_local_parents(root, tmp_path):
    src = tmp_path / "in" / "model.pth"
    src.parent.mkdir()
    payload = os.urandom(300_000)
    src.write_bytes(payload)
    uri = storage.join(root, "models", "model.pth")
    storage.upload_file(src, uri)
    dst = tmp_path / "out" / "nested" / "model.pth"
    storage.download_file(uri, dst)
    assert dst.read_bytes() == payload
    assert not [p.name for p in dst.parent.iterdir() if p.name != "model.pth"], "temporary files left behind"


def test_tree_round_trip(root, tmp_path):
    src = tmp_path / "tree"
    _write_tree(src, TREE)
    prefix = storage.join(root, "tree")
    written = storage.upload_tree(src, prefix, workers=3, progress=False)
    assert written == sorted(storage.join(prefix, rel) for rel in TREE)
    out = tmp_path / "back"
    got = storage.download_tree(prefix, out, workers=3, progress=False)
    assert got == sorted(str(out / rel) for rel in TREE)
    for rel, data in TREE.items():
        assert (out / rel).read_bytes() == data


def test_tree_errors(root, tmp_path):
    with pytest.raises(NotFoundError, match="missing-dir"):
        storage.upload_tree(tmp_path / "missing-dir", storage.join(root, "t"), progress=False)
    with pytest.raises(NotFoundError, match="nothing-here"):
        storage.download_tree(storage.join(root, "nothing-here"), tmp_path / "o", progress=False)
    with pytest.raises(BadInputError, match="workers"):
        storage.upload_tree(_tree_with_one_file(tmp_path), storage.join(root, "t"), workers=0, progress=False)


def _tree_with_one_file(tmp_path):
    folder = tmp_path / "one"
    _write_tree(folder, {"f": b"1"})
    return folder


def test_list_prefix_and_list_dir(root):
    for rel in ["data/a", "data/sub/b", "data/sub/deep/c", "data2/x", "top"]:
        storage.write_bytes(storage.join(root, rel), rel.encode())
    data = storage.join(root, "data")
    expected = [storage.join(root, rel) for rel in ["data/a", "data/sub/b", "data/sub/deep/c"]]
    assert storage.list_prefix(data) == expected  # "data2/x" is not under the folder "data"
    assert storage.list_prefix(data + "/") == expected
    assert storage.list_dir(data) == [storage.join(root, "data/a"), storage.join(root, "data/sub") + "/"]
    assert storage.list_prefix(data, recursive=False) == storage.list_dir(data)
    assert storage.list_dir(root) == [
        storage.join(root, "data") + "/",
        storage.join(root, "data2") + "/",
        storage.join(root, "top"),
    ]
    assert storage.list_prefix(storage.join(root, "absent")) == []
    assert storage.list_dir(storage.join(root, "absent")) == []


def test_exists_and_delete(root):
    uri = storage.join(root, "d", "f.txt")
    assert not storage.exists(uri)
    storage.write_text(uri, "x")
    assert storage.exists(uri)
    assert not storage.exists(storage.join(root, "d"))  # a folder is not a file/object
    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri)  # missing is fine by default
    with pytest.raises(NotFoundError, match="f.txt"):
        storage.delete(uri, missing_ok=False)


def test_delete_prefix_removes_only_that_folder(root):
    for rel in ["run/a", "run/b/c", "run2/keep"]:
        storage.write_bytes(storage.join(root, rel), b"1")
    assert storage.delete_prefix(storage.join(root, "run")) == 2
    assert storage.list_prefix(root) == [storage.join(root, "run2/keep")]
    assert storage.delete_prefix(storage.join(root, "run")) == 0


def test_copy(root):
    src = storage.join(root, "src", "f.bin")
    storage.write_bytes(src, b"payload")
    dst = storage.join(root, "dst", "g.bin")
    storage.copy(src, dst)
    assert storage.read_bytes(dst) == b"payload"
    assert storage.read_bytes(src) == b"payload"


def test_missing_keys_raise_not_found_naming_the_uri(root, tmp_path):
    missing = storage.join(root, "no", "such.file")
    with pytest.raises(NotFoundError) as info:
        storage.read_bytes(missing)
    assert missing in str(info.value)
    target = tmp_path / "dl" / "such.file"
    with pytest.raises(NotFoundError, match="such.file"):
        storage.download_file(missing, target)
    assert not target.exists()
    with pytest.raises(NotFoundError, match="such.file"):
        storage.copy(missing, storage.join(root, "copy"))
    assert not storage.exists(storage.join(root, "copy"))
