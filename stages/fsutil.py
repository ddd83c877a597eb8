"""Atomic local file writes: a temporary file beside the target, renamed onto it once it is complete.

Every local file nnkube writes goes through :func:`atomic_path` (or :func:`copy_atomic`), so a reader, or a
rerun after a crash, sees the old file or the new one, never a part; a failed write leaves the old file (if
any) and no temporary behind. Temporary names start with :data:`TMP_PREFIX` (a dot file), so listings skip
what a killed process may leave, and new files get the usual permissions (``0o666`` less the umask), not the
``0o600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".nnkube-tmp-"

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``, on failure removed.

    Parent folders are created as needed. The temporary file exists (empty) when the block starts; writers
    that take a path (``torch.save``, ``SimpleITK.WriteImage``, ``np.save``) or open it themselves replace
    its content.

    Args:
        path: The file to create or replace.
        suffix: Ending of the temporary name, for writers that pick the format by it (``.nii.gz``, ``.npy``).

    Example:
        >>> with atomic_path(out / "case.npy", suffix=".npy") as tmp:  # doctest: +SKIP
        ...     np.save(tmp, array)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)
        finally:
            os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike, keep_metadata: bool = False) -> None:
    """Copy the file ``src`` to ``dst`` atomically (nothing to do when both name the same file).

    Args:
        src: Source file.
        dst: Destination file (replaced).
        keep_metadata: Also copy permission bits and times (:func:`shutil.copy2`), e.g. so that the copy's
            modification time tells whether it is up to date.
    """
    if Path(src).resolve() == Path(dst).resolve():
        return
    with atomic_path(dst) as tmp:
        (shutil.copy2 if keep_metadata else shutil.copyfile)(src, tmp)
