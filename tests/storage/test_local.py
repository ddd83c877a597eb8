"""Local-backend specifics: atomic writes and their temporary files, error translation."""

from __future__ import annotations

import os

import pytest

from stages import storage
from stages.errors import BadInputError, NotFoundError
from stages.storage.backend import TMP_PREFIX, atomic_write
from stages.storage.local import LocalBackend


def test_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "doc.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_write(str(target)) as fh:
            fh.write(b"half of the new")
            raise RuntimeError("midway")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["doc.json"]


def test_temporary_files_of_writes_in_progress_are_not_listed(tmp_path):
    storage.write_bytes(tmp_path / "real.bin", b"1")
    (tmp_path / f"{TMP_PREFIX}abc").write_bytes(b"partial")
    assert storage.list_prefix(tmp_path) == [str(tmp_path / "real.bin")]
    assert storage.list_dir(tmp_path) == [str(tmp_path / "real.bin")]


def test_written_files_get_normal_permissions(tmp_path):
    storage.write_bytes(tmp_path / "f", b"1")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~umask


def test_local_error_translation(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(NotFoundError, match="is a folder"):
        storage.read_bytes(tmp_path / "folder")
    (tmp_path / "file").write_bytes(b"1")
    with pytest.raises(BadInputError, match="is a file, not a folder"):
        storage.write_bytes(tmp_path / "file" / "child", b"x")


def test_download_tree_refuses_names_escaping_the_destination(tmp_path, monkeypatch):
    src = tmp_path / "src"
    storage.write_bytes(src / "ok", b"1")
    monkeypatch.setattr(LocalBackend, "list_names", lambda self, prefix, recursive: ["ok", "../evil"])
    with pytest.raises(BadInputError, match="outside"):
        storage.download_tree(src, tmp_path / "dst", progress=False)
    assert not (tmp_path / "evil").exists()


def test_local_copy_uses_local_paths_in_place_and_fetches_s3_into_scratch(tmp_path):
    with storage.local_copy(f"file://{tmp_path}/data", fetch=pytest.fail) as path:
        assert path == tmp_path / "data"
    fetched = []

    def fetch(uri, dest):
        fetched.append(uri)
        dest.write_text("content")

    with storage.local_copy("s3://bucket/prefix/case.nii.gz", fetch, prefix="nnkube-test-") as path:
        assert path.name == "case.nii.gz" and path.parent.name.startswith("nnkube-test-")
        assert path.read_text() == "content"
    assert fetched == ["s3://bucket/prefix/case.nii.gz"] and not path.parent.exists()
