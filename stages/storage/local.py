"""Local file-system backend: plain files, written through a temporary file and ``os.replace``."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator

from stages.errors import AccessDeniedError, BadInputError, NotFoundError, StorageError
from stages.storage.backend import CHUNK, TMP_PREFIX, Backend, atomic_write
from stages.storage.uri import to_local_path


@contextlib.contextmanager
def local_errors(path: str) -> Iterator[None]:
    """Translate ``OSError`` raised inside the block into nnkube errors naming ``path``."""
    try:
        yield
    except FileNotFoundError as exc:
        raise NotFoundError(f"{exc.filename or path} does not exist") from exc
    except IsADirectoryError as exc:
        raise NotFoundError(f"{exc.filename or path} is a folder, not a file") from exc
    except PermissionError as exc:
        raise AccessDeniedError(f"permission denied: {exc.filename or path}") from exc
    except (NotADirectoryError, FileExistsError) as exc:
        raise BadInputError(f"{path}: a parent of it is a file, not a folder") from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StorageError(f"no space left on device writing {path}") from exc
        raise StorageError(f"{path}: {exc}") from exc


def copy_local_file(src: str, dst: str) -> None:
    """Atomically copy a local file to another local path (parents created)."""
    with local_errors(src), open(src, "rb") as fin:
        with local_errors(dst), atomic_write(dst) as fout:
            shutil.copyfileobj(fin, fout, CHUNK)


class LocalBackend(Backend):
    """Files on a local or mounted file system."""

    def read_bytes(self, uri: str) -> bytes:
        """Return a file's content."""
        path = to_local_path(uri)
        with local_errors(path), open(path, "rb") as fh:
            return fh.read()

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Atomically create or replace a file with ``data``."""
        path = to_local_path(uri)
        with local_errors(path), atomic_write(path) as fh:
            fh.write(data)

    def upload_file(self, local_path: str, uri: str) -> None:
        """Atomically copy a local file to the local path ``uri``."""
        copy_local_file(to_local_path(local_path), to_local_path(uri))

    def download_file(self, uri: str, local_path: str) -> None:
        """Atomically copy the file ``uri`` to ``local_path``."""
        copy_local_file(to_local_path(uri), to_local_path(local_path))

    def list_names(self, uri_prefix: str, recursive: bool) -> list[str]:
        """Names below a folder, relative to it (temporary files of writes in progress left out)."""
        root = to_local_path(uri_prefix)
        if not os.path.isdir(root):
            return []
        names: list[str] = []
        with local_errors(root):
            if not recursive:
                with os.scandir(root) as entries:
                    for entry in entries:
                        if entry.name.startswith(TMP_PREFIX):
                            continue
                        names.append(entry.name + "/" if entry.is_dir() else entry.name)
                return names
            for folder, _dirs, files in os.walk(root):
                rel = os.path.relpath(folder, root)
                for name in files:
                    if not name.startswith(TMP_PREFIX):
                        names.append(name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}")
        return names

    def exists(self, uri: str) -> bool:
        """Tell whether ``uri`` is a regular file."""
        return os.path.isfile(to_local_path(uri))

    def delete(self, uri: str, missing_ok: bool = True) -> None:
        """Delete one file."""
        path = to_local_path(uri)
        if missing_ok and not os.path.lexists(path):
            return
        with local_errors(path):
            os.remove(path)

    def delete_prefix(self, uri_prefix: str) -> int:
        """Remove a folder and everything below it."""
        root = to_local_path(uri_prefix)
        if not os.path.isdir(root):
            return 0
        count = len(self.list_names(root, recursive=True))
        with local_errors(root):
            shutil.rmtree(root)
        return count

    def copy(self, src_uri: str, dst_uri: str) -> None:
        """Atomically copy a file."""
        copy_local_file(to_local_path(src_uri), to_local_path(dst_uri))
