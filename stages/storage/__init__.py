"""The storage layer: one set of URI-based functions over local files and S3 objects.

A URI is a local path (or ``file://`` path) or ``s3://bucket/key``. Every write is atomic (a reader sees the old
content or the new one, never a part); every S3 write records the content's sha256 in the object metadata and
every S3 read checks it. Transient S3 failures are retried with exponential backoff and then raised as
:class:`~stages.errors.TransientError`; a missing bucket or key gives :class:`~stages.errors.NotFoundError`,
rejected credentials :class:`~stages.errors.AccessDeniedError`; messages name the URI. Nothing else in nnkube
talks to boto3.

Prefixes are folders: ``list_prefix("s3://b/data")`` lists ``s3://b/data/...`` and never ``s3://b/data2``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from stages.errors import BadInputError, NotFoundError
from stages.storage.backend import Backend
from stages.storage.local import LocalBackend
from stages.storage.s3 import S3Backend
from stages.storage.settings import StorageSettings, configure, current_settings
from stages.storage.transfer import run_parallel
from stages.storage.uri import UriLike, as_str, basename, is_s3, join, parent, to_local_path

__all__ = [
    "Backend",
    "StorageSettings",
    "basename",
    "configure",
    "copy",
    "current_settings",
    "delete",
    "delete_prefix",
    "download_file",
    "download_tree",
    "exists",
    "get_backend",
    "is_s3",
    "join",
    "list_dir",
    "list_prefix",
    "local_copy",
    "parent",
    "read_bytes",
    "read_text",
    "to_local_path",
    "upload_file",
    "upload_tree",
    "write_bytes",
    "write_text",
]

_LOCAL = LocalBackend()


def get_backend(uri: UriLike) -> Backend:
    """Return the backend serving ``uri`` (S3 with the current settings, or the local file system)."""
    return S3Backend(current_settings()) if is_s3(uri) else _LOCAL


def read_bytes(uri: UriLike) -> bytes:
    """Return the content of a file or object (S3: verified against its recorded sha256).

    Raises:
        NotFoundError: The file, key or bucket does not exist.
        ChecksumMismatchError: The content does not match the sha256 recorded when it was written.
        TransientError: S3 kept failing transiently.
    """
    return get_backend(uri).read_bytes(as_str(uri))


def write_bytes(uri: UriLike, data: bytes) -> None:
    """Atomically create or replace a file or object with ``data`` (local parent folders are created)."""
    get_backend(uri).write_bytes(as_str(uri), bytes(data))


def read_text(uri: UriLike, encoding: str = "utf-8") -> str:
    """Return the content of a file or object decoded as text.

    Raises:
        BadInputError: The content is not valid ``encoding`` text.
    """
    data = read_bytes(uri)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{as_str(uri)}: not valid {encoding} text ({exc})") from exc


def write_text(uri: UriLike, text: str, encoding: str = "utf-8") -> None:
    """Atomically create or replace a file or object with ``text`` encoded as ``encoding``."""
    write_bytes(uri, text.encode(encoding))


def upload_file(local_path: UriLike, uri: UriLike) -> None:
    """Atomically store the local file ``local_path`` at ``uri`` (an S3 URI or another local path)."""
    get_backend(uri).upload_file(to_local_path(local_path), as_str(uri))


def download_file(uri: UriLike, local_path: UriLike) -> None:
    """Atomically copy ``uri`` to the local file ``local_path`` (S3: verified against its sha256)."""
    get_backend(uri).download_file(as_str(uri), to_local_path(local_path))


@contextlib.contextmanager
def local_copy(uri: UriLike, fetch: Callable[[str, Path], object], prefix: str = "nnkube-in-") -> Iterator[Path]:
    """A local path holding the content of ``uri``, for code that works on local files only.

    A local path (or ``file://`` URI) is used in place. For an ``s3://`` URI, ``fetch(uri, dest)`` (e.g.
    :func:`download_file` or :func:`download_tree`) fills ``dest``, a path named like the URI's last component
    (``input`` for a bucket) in a temporary folder that is removed on exit.

    Args:
        uri: File or folder URI.
        fetch: Copies the S3 content to the local path it is given.
        prefix: Name prefix of the temporary folder.
    """
    uri = as_str(uri)
    if not is_s3(uri):
        yield Path(to_local_path(uri))
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        dest = Path(scratch) / (basename(uri) or "input")
        fetch(uri, dest)
        yield dest


def copy(src_uri: UriLike, dst_uri: UriLike) -> None:
    """Atomically copy one file/object to another URI, across backends if need be (S3 to S3 is server-side)."""
    src, dst = as_str(src_uri), as_str(dst_uri)
    if is_s3(src) == is_s3(dst):
        get_backend(src).copy(src, dst)
    elif is_s3(dst):
        upload_file(src, dst)
    else:
        download_file(src, dst)


def list_prefix(uri_prefix: UriLike, recursive: bool = True) -> list[str]:
    """Full URIs of the files/objects under the folder ``uri_prefix``, sorted.

    Args:
        uri_prefix: A folder-like prefix (a trailing ``/`` is optional).
        recursive: True: every file/object below, at any depth. False: same as :func:`list_dir`.

    Returns:
        Sorted URIs; empty when nothing is there (S3: a missing bucket raises NotFoundError).
    """
    return get_backend(uri_prefix).list_prefix(as_str(uri_prefix), recursive)


def list_dir(uri_prefix: UriLike) -> list[str]:
    """Immediate children of the folder ``uri_prefix``: files/objects, and subfolders with a trailing ``/``."""
    return get_backend(uri_prefix).list_dir(as_str(uri_prefix))


def exists(uri: UriLike) -> bool:
    """Tell whether a file (local: a regular file, not a folder) or an object exists at ``uri``.

    Raises:
        NotFoundError: S3 only: the bucket itself does not exist.
    """
    return get_backend(uri).exists(as_str(uri))


def delete(uri: UriLike, missing_ok: bool = True) -> None:
    """Delete one file/object; a missing one is an error only when ``missing_ok`` is False."""
    get_backend(uri).delete(as_str(uri), missing_ok)


def delete_prefix(uri_prefix: UriLike) -> int:
    """Delete every file/object under the folder ``uri_prefix``; return how many were removed."""
    return get_backend(uri_prefix).delete_prefix(as_str(uri_prefix))


def _copy_tree(src_prefix: str, dst_prefix: str, workers: int, progress: bool | None, desc: str) -> list[str]:
    """Copy every file/object under ``src_prefix`` to the same relative place under ``dst_prefix``."""
    source = get_backend(src_prefix)
    if not is_s3(src_prefix) and not os.path.isdir(to_local_path(src_prefix)):
        raise NotFoundError(f"{src_prefix} is not a folder")
    names = sorted(source.list_names(src_prefix, recursive=True))
    if not names and is_s3(src_prefix):
        raise NotFoundError(f"nothing under {src_prefix}")
    if not is_s3(dst_prefix):
        for name in names:
            norm = os.path.normpath(name)
            if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):
                raise BadInputError(f"{join(src_prefix, name)}: the name would land outside {dst_prefix}")
    pairs = [(join(src_prefix, name), join(dst_prefix, name)) for name in names]
    run_parallel([lambda s=s, d=d: copy(s, d) for s, d in pairs], workers, progress, desc)
    return [d for _, d in pairs]


def upload_tree(local_dir: UriLike, uri_prefix: UriLike, workers: int = 8, progress: bool | None = None) -> list[str]:
    """Upload every file below a local folder to the same relative keys under ``uri_prefix``, in parallel.

    Args:
        local_dir: The local folder to upload.
        uri_prefix: Destination folder (S3 or local).
        workers: Files transferred at once.
        progress: Show a tqdm bar (True), never (False), or when stderr is a terminal (None).

    Returns:
        The destination URIs written, sorted.

    Raises:
        NotFoundError: ``local_dir`` is not a folder.
    """
    src = to_local_path(local_dir)
    return _copy_tree(src, as_str(uri_prefix), workers, progress, f"upload {basename(src)}")


def download_tree(uri_prefix: UriLike, local_dir: UriLike, workers: int = 8, progress: bool | None = None) -> list[str]:
    """Download every object/file under ``uri_prefix`` to the same relative paths below ``local_dir``.

    Args:
        uri_prefix: Source folder (S3 or local).
        local_dir: Destination folder, created as needed.
        workers: Files transferred at once.
        progress: Show a tqdm bar (True), never (False), or when stderr is a terminal (None).

    Returns:
        The local paths written, sorted.

    Raises:
        NotFoundError: Nothing exists under an S3 ``uri_prefix``, or a local one is not a folder.
        BadInputError: A key would be written outside ``local_dir`` (``..`` in its name).
    """
    dst = to_local_path(local_dir)
    return _copy_tree(as_str(uri_prefix), dst, workers, progress, f"download {basename(as_str(uri_prefix))}")
