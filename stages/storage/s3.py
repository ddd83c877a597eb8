"""S3 backend: atomic puts with a sha256 in the object metadata, verified reads, our own retries.

Small objects go up in one ``PutObject``; larger ones in a multipart upload that is completed only once every
part is in and aborted on failure, so the final key never shows a partial object. Every write stores the
content's sha256 as ``x-amz-meta-sha256``; every read recomputes it and raises
:class:`~stages.errors.ChecksumMismatchError` on a difference. Objects written by other tools (no sha256 in
their metadata) are read without a check.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from stages.errors import BadInputError, ChecksumMismatchError, NotFoundError, StorageError
from stages.storage.backend import CHUNK, Backend, atomic_write, sha256_bytes, sha256_file
from stages.storage.local import local_errors
from stages.storage.retry import call_with_retries, error_code
from stages.storage.settings import StorageSettings, s3_client
from stages.storage.transfer import run_parallel
from stages.storage.uri import S3_SCHEME, split_s3, to_local_path

log = logging.getLogger(__name__)

T = TypeVar("T")

SHA_KEY = "sha256"  # stored as the x-amz-meta-sha256 header
MAX_PARTS = 10_000
MAX_COPY_SIZE = 5 * 1024**3  # the largest source CopyObject accepts
DELETE_BATCH = 1000

ReadRange = Callable[[int, int], bytes]


def _folder_key(uri_prefix: str) -> tuple[str, str]:
    """``(bucket, key prefix ending in '/' or empty)`` of a folder-like S3 prefix."""
    bucket, key = split_s3(uri_prefix)
    key = key.strip("/")
    return bucket, f"{key}/" if key else ""


def _check_sha(uri: str, expected: str | None, actual: str) -> None:
    if expected is None:
        log.debug("%s has no sha256 in its metadata; content not verified", uri)
    elif expected != actual:
        raise ChecksumMismatchError(
            f"{uri}: content sha256 {actual} does not match the sha256 {expected} recorded when it was written"
        )


class S3Backend(Backend):
    """Objects in S3 (AWS or any S3-compatible server), reached with the given settings."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self.client = s3_client(settings)

    # -- plumbing ----------------------------------------------------------------------------------------
    def _call(self, op: str, uri: str, fn: Callable[[], T]) -> T:
        s = self.settings
        return call_with_retries(
            op, uri, fn, max_attempts=s.max_attempts, base_delay=s.base_delay, max_delay=s.max_delay
        )

    def _api(self, op: str, uri: str, **kwargs: Any) -> dict:
        """One S3 API call ``op`` with retries."""
        method = getattr(self.client, op)
        return self._call(op, uri, lambda: method(**kwargs))

    def _check_bucket(self, uri: str) -> None:
        """Raise NotFoundError naming the bucket if the bucket of ``uri`` does not exist."""
        bucket, _ = split_s3(uri)
        self._api("head_bucket", uri, Bucket=bucket)

    def _head(self, uri: str) -> dict | None:
        """HeadObject of ``uri``, or None if the key is absent (a missing bucket raises NotFoundError)."""
        bucket, key = split_s3(uri)
        try:
            return self._api("head_object", uri, Bucket=bucket, Key=key)
        except NotFoundError:
            self._check_bucket(uri)
            return None

    # -- reads -------------------------------------------------------------------------------------------
    def _get_into(self, uri: str, sink: Callable[[bytes], None]) -> str | None:
        """GET ``uri`` streaming into ``sink``; return the sha256 recorded in its metadata (after checking it)."""
        bucket, key = split_s3(uri)
        response = self.client.get_object(Bucket=bucket, Key=key)
        expected = response.get("Metadata", {}).get(SHA_KEY)
        digest = hashlib.sha256()
        for chunk in response["Body"].iter_chunks(CHUNK):
            digest.update(chunk)
            sink(chunk)
        _check_sha(uri, expected, digest.hexdigest())
        return expected

    def read_bytes(self, uri: str) -> bytes:
        """Return an object's content, verified against its recorded sha256."""

        def attempt() -> bytes:
            chunks: list[bytes] = []
            self._get_into(uri, chunks.append)
            return b"".join(chunks)

        return self._call("get_object", uri, attempt)

    def download_file(self, uri: str, local_path: str) -> None:
        """Download an object to a local file, atomically and verified against its recorded sha256."""
        dst = to_local_path(local_path)

        def attempt() -> None:
            with local_errors(dst), atomic_write(dst) as fh:
                self._get_into(uri, fh.write)

        self._call("get_object", uri, attempt)

    # -- writes ------------------------------------------------------------------------------------------
    def write_bytes(self, uri: str, data: bytes) -> None:
        """Store ``data`` at ``uri`` (single PUT or multipart by size), sha256 in the metadata."""
        view = memoryview(data)
        self._put(uri, len(data), lambda offset, size: bytes(view[offset : offset + size]), sha256_bytes(data))

    def upload_file(self, local_path: str, uri: str) -> None:
        """Store a local file at ``uri`` (single PUT or multipart by size), sha256 in the metadata."""
        src = to_local_path(local_path)
        with local_errors(src):
            size = os.path.getsize(src)
            sha = sha256_file(src)

        def read_range(offset: int, length: int) -> bytes:
            with local_errors(src), open(src, "rb") as fh:
                fh.seek(offset)
                return fh.read(length)

        self._put(uri, size, read_range, sha)

    def _put(self, uri: str, size: int, read_range: ReadRange, sha: str) -> None:
        bucket, key = split_s3(uri)
        if not key or key.endswith("/"):
            raise BadInputError(f"{uri}: an object key must not be empty or end with '/'")
        if size < self.settings.multipart_threshold:
            body = read_range(0, size)
            self._api("put_object", uri, Bucket=bucket, Key=key, Body=body, Metadata={SHA_KEY: sha})
        else:
            self._multipart(uri, size, read_range, sha)

    def _multipart(self, uri: str, size: int, read_range: ReadRange, sha: str) -> None:
        bucket, key = split_s3(uri)
        part_size = max(self.settings.multipart_chunksize, -(-size // MAX_PARTS))
        offsets = list(range(0, size, part_size)) or [0]
        upload = self._api("create_multipart_upload", uri, Bucket=bucket, Key=key, Metadata={SHA_KEY: sha})
        upload_id = upload["UploadId"]
        ids = {"Bucket": bucket, "Key": key, "UploadId": upload_id}

        def put_part(number: int, offset: int) -> dict:
            body = read_range(offset, min(part_size, size - offset))
            response = self._api("upload_part", uri, PartNumber=number, Body=body, **ids)
            return {"PartNumber": number, "ETag": response["ETag"]}

        try:
            tasks = [lambda n=n, off=off: put_part(n, off) for n, off in enumerate(offsets, start=1)]
            parts = run_parallel(tasks, self.settings.max_concurrency, progress=False)
            self._complete(uri, ids, parts, sha)
        except BaseException:
            self._abort(uri, ids)
            raise

    def _complete(self, uri: str, ids: dict, parts: list[dict], sha: str) -> None:
        try:
            self._api("complete_multipart_upload", uri, MultipartUpload={"Parts": parts}, **ids)
        except StorageError as exc:
            # A retried Complete whose first try did land finds the upload gone: accept it if the object is ours.
            cause = exc.__cause__
            if isinstance(cause, ClientError) and error_code(cause)[0] == "NoSuchUpload":
                head = self._head(uri)
                if head is not None and head.get("Metadata", {}).get(SHA_KEY) == sha:
                    return
            raise

    def _abort(self, uri: str, ids: dict) -> None:
        """Abort a multipart upload, once, best effort (the server may be the reason we are here)."""
        try:
            self.client.abort_multipart_upload(**ids)
        except Exception as exc:  # noqa: BLE001 - an abort must never hide the original failure
            log.warning("%s: could not abort multipart upload %s: %s", uri, ids["UploadId"], exc)

    # -- listing, existence, deletion, copy --------------------------------------------------------------
    def _iter_keys(self, uri_prefix: str, delimiter: str | None):
        """Yield ``(relative name, is_folder)`` for every key (and common prefix) under a folder prefix."""
        bucket, prefix = _folder_key(uri_prefix)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": self.settings.page_size}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        while True:
            page = self._api("list_objects_v2", uri_prefix, **kwargs)
            for obj in page.get("Contents", []):
                yield obj["Key"][len(prefix) :], False
            for common in page.get("CommonPrefixes", []):
                yield common["Prefix"][len(prefix) :], True
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            kwargs["ContinuationToken"] = token

    def list_names(self, uri_prefix: str, recursive: bool) -> list[str]:
        """Names under a folder prefix (folder marker objects, keys ending in '/', are left out)."""
        names = []
        for name, is_folder in self._iter_keys(uri_prefix, None if recursive else "/"):
            if name and (is_folder or not name.endswith("/")):
                names.append(name)
        return names

    def exists(self, uri: str) -> bool:
        """Tell whether the object exists (a missing bucket raises NotFoundError)."""
        return self._head(uri) is not None

    def delete(self, uri: str, missing_ok: bool = True) -> None:
        """Delete one object."""
        bucket, key = split_s3(uri)
        if not missing_ok and self._head(uri) is None:
            raise NotFoundError(f"{uri} does not exist")
        self._api("delete_object", uri, Bucket=bucket, Key=key)

    def delete_prefix(self, uri_prefix: str) -> int:
        """Delete every object under a folder prefix, folder markers included, in batches."""
        bucket, prefix = _folder_key(uri_prefix)
        keys = [prefix + name for name, _ in self._iter_keys(uri_prefix, None) if name]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": k} for k in keys[start : start + DELETE_BATCH]]
            response = self._api("delete_objects", uri_prefix, Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"delete_prefix {uri_prefix}: {len(errors)} object(s) not deleted, e.g. "
                    f"{S3_SCHEME}{bucket}/{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}"
                )
        return len(keys)

    def copy(self, src_uri: str, dst_uri: str) -> None:
        """Copy an object; server-side when it carries a sha256, else through a verified local file."""
        head = self._head(src_uri)
        if head is None:
            raise NotFoundError(f"{src_uri} does not exist")
        src_bucket, src_key = split_s3(src_uri)
        dst_bucket, dst_key = split_s3(dst_uri)
        if head.get("Metadata", {}).get(SHA_KEY) and head.get("ContentLength", 0) <= MAX_COPY_SIZE:
            self._api(
                "copy_object",
                dst_uri,
                Bucket=dst_bucket,
                Key=dst_key,
                CopySource={"Bucket": src_bucket, "Key": src_key},
                MetadataDirective="COPY",
            )
            return
        with tempfile.TemporaryDirectory(prefix="nnkube-copy-") as scratch:
            tmp = os.path.join(scratch, "object")
            self.download_file(src_uri, tmp)
            self.upload_file(tmp, dst_uri)
