"""URI helpers: a URI is a local path (optionally ``file://``) or ``s3://bucket/key``.

These functions are pure string manipulation; they never touch a file system or a network.
"""

from __future__ import annotations

import os
import posixpath

from stages.errors import BadInputError

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"

UriLike = str | os.PathLike


def as_str(uri: UriLike) -> str:
    """Return a URI as a string (accepts :class:`os.PathLike` objects for local paths)."""
    return os.fspath(uri)


def is_s3(uri: UriLike) -> bool:
    """Tell whether a URI names an S3 object or prefix (``s3://...``)."""
    return as_str(uri).startswith(S3_SCHEME)


def to_local_path(uri: UriLike) -> str:
    """Return the file-system path of a local URI (strips a ``file://`` scheme).

    Raises:
        BadInputError: The URI is an S3 URI.
    """
    text = as_str(uri)
    if is_s3(text):
        raise BadInputError(f"{text}: expected a local path, got an S3 URI")
    if text.startswith(FILE_SCHEME):
        text = text[len(FILE_SCHEME) :]
    if not text:
        raise BadInputError("empty local path")
    return text


def split_s3(uri: UriLike) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``; the key may be empty.

    Raises:
        BadInputError: The URI is not an S3 URI or has no bucket name.
    """
    text = as_str(uri)
    if not is_s3(text):
        raise BadInputError(f"{text}: not an s3:// URI")
    bucket, _, key = text[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise BadInputError(f"{text}: the S3 URI has no bucket name")
    return bucket, key


def join(uri: UriLike, *parts: str) -> str:
    """Append path components to a URI.

    Leading and trailing slashes of each part are ignored, so ``join("s3://b/x/", "/y")`` is ``"s3://b/x/y"``;
    empty parts are skipped.

    Args:
        uri: Base URI (local path or ``s3://``).
        *parts: Components to append; each may itself contain ``/``.

    Returns:
        The joined URI as a string.
    """
    base = as_str(uri)
    clean = [p.strip("/") for p in map(os.fspath, parts) if p and p.strip("/")]
    if is_s3(base):
        head = base.rstrip("/")
        if head == S3_SCHEME.rstrip("/"):
            raise BadInputError(f"{base}: the S3 URI has no bucket name")
        return "/".join([head, *clean])
    return os.path.join(base, *clean) if clean else base


def parent(uri: UriLike) -> str:
    """Return the URI one level up (``s3://b/a/k`` -> ``s3://b/a``; a bucket root is its own parent)."""
    text = as_str(uri)
    if is_s3(text):
        bucket, key = split_s3(text)
        key = key.rstrip("/")
        up = posixpath.dirname(key)
        return f"{S3_SCHEME}{bucket}/{up}" if up else f"{S3_SCHEME}{bucket}"
    stripped = text.rstrip("/") or "/"
    return os.path.dirname(stripped) or "."


def basename(uri: UriLike) -> str:
    """Return the last component of a URI (``s3://b/a/k.txt`` -> ``k.txt``; a trailing ``/`` is ignored)."""
    text = as_str(uri)
    if is_s3(text):
        bucket, key = split_s3(text)
        key = key.rstrip("/")
        return posixpath.basename(key) if key else bucket
    return os.path.basename(text.rstrip("/"))
