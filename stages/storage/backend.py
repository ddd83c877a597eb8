"""The interface every storage backend implements, and helpers they share (hashing, atomic local writes).

Backends take and return URIs of their own kind. Listing is built on one primitive, :meth:`Backend.list_names`,
which returns names relative to a prefix, so both backends agree on what ``list_prefix`` and ``list_dir`` mean:
a prefix is a folder (``s3://b/data`` lists ``s3://b/data/...``, never ``s3://b/data2``), folders show up in
``list_dir`` with a trailing ``/``, and an absent prefix is simply empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import BinaryIO

from stages.fsutil import TMP_PREFIX, atomic_path
from stages.storage.uri import join

__all__ = ["CHUNK", "TMP_PREFIX", "Backend", "atomic_write", "sha256_bytes", "sha256_file"]

CHUNK = 1024 * 1024


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    """Hex sha256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[BinaryIO]:
    """Open a temporary file next to ``path``; on success it is synced and renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was, so a reader never sees a
    half-written file (see :func:`stages.fsutil.atomic_path`). Parent folders are created as needed.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


class Backend(ABC):
    """Operations on one kind of storage; all URIs passed in belong to this backend."""

    @abstractmethod
    def read_bytes(self, uri: str) -> bytes:
        """Return the whole content of an object/file (checked against its checksum where one is stored)."""

    @abstractmethod
    def write_bytes(self, uri: str, data: bytes) -> None:
        """Atomically create or replace an object/file with ``data``."""

    @abstractmethod
    def upload_file(self, local_path: str, uri: str) -> None:
        """Atomically store the local file ``local_path`` at ``uri``."""

    @abstractmethod
    def download_file(self, uri: str, local_path: str) -> None:
        """Atomically copy the object/file at ``uri`` to the local file ``local_path`` (checksum checked)."""

    @abstractmethod
    def list_names(self, uri_prefix: str, recursive: bool) -> list[str]:
        """Names under the folder ``uri_prefix``, relative to it, POSIX separators, unsorted.

        Recursive listings hold files/objects only; non-recursive ones hold immediate children, folders with
        a trailing ``/``. An absent prefix gives an empty list.
        """

    @abstractmethod
    def exists(self, uri: str) -> bool:
        """Tell whether an object (S3) or a regular file (local) exists at ``uri``."""

    @abstractmethod
    def delete(self, uri: str, missing_ok: bool = True) -> None:
        """Delete one object/file; a missing one is fine unless ``missing_ok`` is False."""

    @abstractmethod
    def delete_prefix(self, uri_prefix: str) -> int:
        """Delete everything under the folder ``uri_prefix``; return the number of objects/files removed."""

    @abstractmethod
    def copy(self, src_uri: str, dst_uri: str) -> None:
        """Atomically copy an object/file to another URI of the same backend."""

    def list_prefix(self, uri_prefix: str, recursive: bool = True) -> list[str]:
        """Full URIs under ``uri_prefix``, sorted (see :meth:`list_names`)."""
        return sorted(
            join(uri_prefix, name) + ("/" if name.endswith("/") else "")
            for name in self.list_names(uri_prefix, recursive)
        )

    def list_dir(self, uri_prefix: str) -> list[str]:
        """Immediate children of ``uri_prefix`` as full URIs, folders ending in ``/``, sorted."""
        return self.list_prefix(uri_prefix, recursive=False)
