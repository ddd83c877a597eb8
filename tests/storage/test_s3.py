"""S3-only behaviour on a real SeaweedFS server: checksums, multipart, pagination, concurrency, clear errors."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from stages import storage
from stages.errors import AccessDeniedError, ChecksumMismatchError, NotFoundError
from stages.storage.settings import MiB
from stages.storage.uri import split_s3

pytestmark = pytest.mark.s3


def _head(s3_server, uri: str) -> dict:
    bucket, key = split_s3(uri)
    return s3_server.client().head_object(Bucket=bucket, Key=key)


def test_every_write_records_the_sha256(s3_server, s3_bucket, tmp_path):
    small = storage.join(s3_bucket, "small")
    storage.write_bytes(small, b"abc")
    assert _head(s3_server, small)["Metadata"]["sha256"] == hashlib.sha256(b"abc").hexdigest()
    local = tmp_path / "f"
    local.write_bytes(b"file content")
    uploaded = storage.join(s3_bucket, "uploaded")
    storage.upload_file(local, uploaded)
    assert _head(s3_server, uploaded)["Metadata"]["sha256"] == hashlib.sha256(b"file content").hexdigest()
    copied = storage.join(s3_bucket, "copied")
    storage.copy(uploaded, copied)
    assert _head(s3_server, copied)["Metadata"]["sha256"] == hashlib.sha256(b"file content").hexdigest()


def test_multipart_round_trip_50mb(s3_server, s3_bucket, s3_events, tmp_path):
    size = 50 * 1000 * 1000
    src = tmp_path / "big.bin"
    with open(src, "wb") as fh:
        for _ in range(size // MiB):
            fh.write(os.urandom(MiB))
        fh.write(os.urandom(size % MiB))
    parts: list[str] = []
    lock = threading.Lock()

    def count_part(**kwargs):
        with lock:
            parts.append(kwargs["params"]["PartNumber"])

    s3_events("before-parameter-build.s3.UploadPart", count_part)
    uri = storage.join(s3_bucket, "big", "big.bin")
    storage.upload_file(src, uri)
    chunk = storage.current_settings().multipart_chunksize
    assert sorted(parts) == list(range(1, -(-size // chunk) + 1))  # 8 MiB parts: 6
    head = _head(s3_server, uri)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert head["ContentLength"] == size
    assert head["Metadata"]["sha256"] == digest
    out = tmp_path / "back.bin"
    storage.download_file(uri, out)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest


def test_large_write_bytes_goes_multipart(s3_server, s3_bucket, s3_events, use_settings):
    use_settings(s3_server.settings(multipart_threshold=6 * MiB, multipart_chunksize=5 * MiB, max_concurrency=3))
    calls: list[str] = []
    s3_events("before-call.s3.CreateMultipartUpload", lambda **kw: calls.append("create"))
    s3_events("before-call.s3.CompleteMultipartUpload", lambda **kw: calls.append("complete"))
    data = os.urandom(12 * MiB + 7)
    uri = storage.join(s3_bucket, "bytes.bin")
    storage.write_bytes(uri, data)
    assert calls == ["create", "complete"]
    assert storage.read_bytes(uri) == data


def test_listing_1000_objects_across_pages(s3_server, s3_bucket, s3_events, use_settings, tmp_path):
    use_settings(s3_server.settings(page_size=150))
    src = tmp_path / "many"
    names = [f"d{i % 7}/obj-{i:04d}.txt" for i in range(1000)]
    for name in names:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
    prefix = storage.join(s3_bucket, "many")
    storage.upload_tree(src, prefix, workers=8, progress=False)
    pages: list[int] = []
    s3_events("before-call.s3.ListObjectsV2", lambda **kw: pages.append(1))
    listed = storage.list_prefix(prefix)
    assert listed == sorted(storage.join(prefix, n) for n in names)
    assert len(pages) == 7  # ceil(1000 / 150)
    assert storage.list_dir(prefix) == [storage.join(prefix, f"d{i}") + "/" for i in range(7)]
    assert storage.delete_prefix(prefix) == 1000
    assert storage.list_prefix(prefix) == []


def test_concurrent_writers_to_distinct_keys(s3_bucket):
    def write(i: int) -> str:
        uri = storage.join(s3_bucket, "conc", f"k{i:03d}")
        storage.write_bytes(uri, f"value {i}".encode() * (i + 1))
        return uri

    with ThreadPoolExecutor(max_workers=16) as pool:
        uris = list(pool.map(write, range(64)))
    assert storage.list_prefix(storage.join(s3_bucket, "conc")) == sorted(uris)
    for i, uri in enumerate(uris):
        assert storage.read_bytes(uri) == f"value {i}".encode() * (i + 1)


def test_tampered_object_fails_its_checksum(s3_server, s3_bucket, tmp_path):
    uri = storage.join(s3_bucket, "ckpt", "model.pth")
    storage.write_bytes(uri, b"original weights")
    bucket, key = split_s3(uri)
    old = _head(s3_server, uri)["Metadata"]
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=b"tampered weights", Metadata=old)
    with pytest.raises(ChecksumMismatchError) as info:
        storage.read_bytes(uri)
    assert uri in str(info.value)
    target = tmp_path / "dl" / "model.pth"
    target.parent.mkdir()
    target.write_bytes(b"previous good copy")
    with pytest.raises(ChecksumMismatchError, match="model.pth"):
        storage.download_file(uri, target)
    assert target.read_bytes() == b"previous good copy"  # the bad download never replaced it
    assert [p.name for p in target.parent.iterdir()] == ["model.pth"]


def test_objects_without_a_recorded_sha_are_still_readable(s3_server, s3_bucket):
    uri = storage.join(s3_bucket, "foreign.txt")
    bucket, key = split_s3(uri)
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=b"uploaded by another tool")
    assert storage.read_bytes(uri) == b"uploaded by another tool"
    storage.copy(uri, storage.join(s3_bucket, "copy.txt"))  # goes through a verified re-upload
    assert _head(s3_server, storage.join(s3_bucket, "copy.txt"))["Metadata"]["sha256"] == (
        hashlib.sha256(b"uploaded by another tool").hexdigest()
    )


def test_missing_bucket_is_named(s3_bucket, tmp_path):
    uri = "s3://no-such-bucket-nnkube/some/key.json"
    message = "bucket 'no-such-bucket-nnkube' does not exist"
    for call in (
        lambda: storage.read_bytes(uri),
        lambda: storage.write_bytes(uri, b"x"),
        lambda: storage.exists(uri),
        lambda: storage.list_prefix("s3://no-such-bucket-nnkube/some"),
        lambda: storage.download_file(uri, tmp_path / "x"),
    ):
        with pytest.raises(NotFoundError, match=message) as info:
            call()
        assert "s3://no-such-bucket-nnkube/some" in str(info.value)


@pytest.mark.parametrize("wrong", ["secret", "key"])
def test_rejected_credentials_are_access_denied(s3_server, s3_bucket, s3_events, use_settings, wrong):
    uri = storage.join(s3_bucket, "private.txt")
    storage.write_bytes(uri, b"secret")
    bad = {"secret_access_key": "not-the-secret"} if wrong == "secret" else {"access_key_id": "NOSUCHKEY"}
    use_settings(s3_server.settings(**bad))
    sends: list[int] = []
    s3_events("before-send.s3", lambda **kw: sends.append(1))
    calls = {
        "read": lambda: storage.read_bytes(uri),
        "write": lambda: storage.write_bytes(uri, b"overwrite"),
        "exists": lambda: storage.exists(uri),
        "list": lambda: storage.list_prefix(s3_bucket),
    }
    for name, call in calls.items():
        with pytest.raises(AccessDeniedError) as info:
            call()
        assert s3_bucket in str(info.value), name
    assert len(sends) == len(calls)  # never retried
    use_settings(s3_server.settings())
    assert storage.read_bytes(uri) == b"secret"


def test_env_variables_alone_reach_the_server(s3_bucket):
    storage.configure(None)  # the s3_bucket fixture also set AWS_* in the environment
    uri = storage.join(s3_bucket, "env.txt")
    storage.write_text(uri, "via env")
    assert storage.read_text(uri) == "via env"
