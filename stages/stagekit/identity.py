"""Cheap content identities of files, objects and prefixes, and the input digest of a stage.

A stage reruns only when its inputs or parameters change, so it needs a fingerprint of its inputs that costs
far less than reading them:

* an S3 object is identified by its ETag and size, which a listing returns for a thousand objects per request
  (the ETag of an object written by the same client is the same for the same bytes);
* a local file by the sha256 of its content when it is small (at most :data:`SMALL_FILE` bytes), else by its
  size and modification time in nanoseconds;
* a prefix (folder) by the sorted identities of every object/file below it.

:func:`input_digest` hashes the parameters and these identities into one ``sha256:<hex>`` string.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from stages import storage
from stages.errors import NotFoundError
from stages.storage.backend import TMP_PREFIX, sha256_file
from stages.storage.retry import call_with_retries
from stages.storage.settings import s3_client
from stages.storage.uri import split_s3

SMALL_FILE = 4 * 1024 * 1024
DIGEST_VERSION = 1  # bump when the way identities are computed changes (every stage then reruns once)


def _s3_identity(etag: str, size: int) -> str:
    quote = '"'
    return f"etag:{etag.strip(quote)}:{size}"


def local_file_identity(path: str | os.PathLike) -> str:
    """Identity of a local file: its sha256 when small, else size and modification time.

    Raises:
        NotFoundError: The path is not a regular file.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise NotFoundError(f"{path} does not exist") from exc
    if not os.path.isfile(path):
        raise NotFoundError(f"{path} is not a file")
    if st.st_size <= SMALL_FILE:
        return f"sha256:{sha256_file(path)}"
    return f"stat:{st.st_size}:{st.st_mtime_ns}"


def _s3_call(op: str, uri: str, **kwargs: Any) -> dict:
    """One S3 API call with the storage layer's client, retries and error translation."""
    settings = storage.current_settings()
    method = getattr(s3_client(settings), op)
    return call_with_retries(
        op, uri, lambda: method(**kwargs), max_attempts=settings.max_attempts, base_delay=settings.base_delay,
        max_delay=settings.max_delay,
    )


def _s3_listing(uri_prefix: str, recursive: bool) -> dict[str, str]:
    """``{name relative to the folder prefix: identity}`` of the objects under an S3 folder prefix."""
    bucket, key = split_s3(uri_prefix)
    key = key.strip("/")
    prefix = f"{key}/" if key else ""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": storage.current_settings().page_size}
    if not recursive:
        kwargs["Delimiter"] = "/"
    found: dict[str, str] = {}
    while True:
        page = _s3_call("list_objects_v2", uri_prefix, **kwargs)
        for obj in page.get("Contents", []):
            name = obj["Key"][len(prefix):]
            if name and not name.endswith("/"):
                found[name] = _s3_identity(obj.get("ETag", ""), int(obj.get("Size", 0)))
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return found
        kwargs["ContinuationToken"] = token


def prefix_identities(uri_prefix: str) -> dict[str, str]:
    """Identities of every object/file below a folder prefix, keyed by name relative to it (POSIX separators).

    An absent prefix gives an empty dict (S3: a missing bucket raises NotFoundError).
    """
    uri_prefix = str(uri_prefix)
    if storage.is_s3(uri_prefix):
        return _s3_listing(uri_prefix, recursive=True)
    root = storage.to_local_path(uri_prefix)
    found: dict[str, str] = {}
    if not os.path.isdir(root):
        return found
    for folder, _dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        for name in files:
            if name.startswith(TMP_PREFIX):
                continue
            key = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
            found[key] = local_file_identity(os.path.join(folder, name))
    return found


def identities_of(uri_prefix: str, names: Iterable[str]) -> dict[str, str]:
    """Identities of the given files below ``uri_prefix`` (one listing on S3, one stat per file locally).

    Raises:
        NotFoundError: One of the names does not exist (the message names it).
    """
    names = sorted(set(names))
    if storage.is_s3(uri_prefix):
        listing = _s3_listing(uri_prefix, recursive=True) if names else {}
    else:
        root = storage.to_local_path(uri_prefix)
        listing = {}
        for name in names:
            path = os.path.join(root, *name.split("/"))
            if os.path.isfile(path):
                listing[name] = local_file_identity(path)
    missing = [n for n in names if n not in listing]
    if missing:
        raise NotFoundError(f"{storage.join(uri_prefix, missing[0])} does not exist ({len(missing)} missing)")
    return {n: listing[n] for n in names}


def _s3_files_identities(uris: Sequence[str]) -> dict[str, str | None]:
    """Identities of S3 URIs that may be objects: one listing per parent folder (None: no such object)."""
    by_parent: dict[str, list[str]] = defaultdict(list)
    for uri in uris:
        by_parent[storage.parent(uri)].append(uri)
    out: dict[str, str | None] = {}
    for parent, members in by_parent.items():
        if len(members) == 1:
            bucket, key = split_s3(members[0])
            try:
                head = _s3_call("head_object", members[0], Bucket=bucket, Key=key)
                out[members[0]] = _s3_identity(head.get("ETag", ""), int(head.get("ContentLength", 0)))
            except NotFoundError:
                out[members[0]] = None
            continue
        listing = _s3_listing(parent, recursive=False)
        for uri in members:
            out[uri] = listing.get(posixpath.basename(uri.rstrip("/")))
    return out


def input_identities(input_uris: Sequence[str]) -> list[tuple[str, str]]:
    """``(uri, identity)`` of each input, sorted by URI.

    A URI ending in ``/`` is a prefix; any other is a file/object if one exists there, else a prefix whose
    identity is the hash of its objects' sorted identities. S3 objects sharing a folder cost one listing.

    Raises:
        NotFoundError: An input is neither a file/object nor a non-empty prefix (the message names it).
    """
    uris = sorted({str(u) for u in input_uris})
    s3_files = [u for u in uris if storage.is_s3(u) and not u.endswith("/")]
    known: dict[str, str | None] = _s3_files_identities(s3_files) if s3_files else {}
    result = []
    for uri in uris:
        ident = known.get(uri)
        if ident is None and not uri.endswith("/") and not storage.is_s3(uri):
            path = storage.to_local_path(uri)
            ident = local_file_identity(path) if os.path.isfile(path) else None
        if ident is None:
            listing = prefix_identities(uri)
            if not listing:
                raise NotFoundError(f"input {uri} does not exist (no file, object or non-empty folder there)")
            blob = json.dumps(sorted(listing.items())).encode()
            ident = f"prefix:{len(listing)}:{hashlib.sha256(blob).hexdigest()}"
        result.append((uri, ident))
    return result


def input_digest(params: dict[str, Any], input_uris: Sequence[str]) -> str:
    """Hash of a stage's parameters and of its inputs' content identities.

    Args:
        params: The parameters that change the outputs (JSON-serializable; key order does not matter).
        input_uris: Files, objects or prefixes the stage reads.

    Returns:
        ``"sha256:<hex>"``; equal digests mean the same parameters on inputs with the same identities.

    Raises:
        NotFoundError: An input does not exist.
    """
    doc = {
        "version": DIGEST_VERSION,
        "params": params,
        "inputs": [list(pair) for pair in input_identities(input_uris)],
    }
    blob = json.dumps(doc, sort_keys=True, default=str).encode()
    return f"sha256:{hashlib.sha256(blob).hexdigest()}"
