"""Fixtures of the stage-kit tests: a root URI on each backend, clean logging state, object snapshots."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _clean_logging(restore_logging):
    """Every stage-kit test starts and ends with clean logging state (see ``tests/conftest.py``)."""


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def root(request, tmp_path) -> str:
    """A folder URI on the local backend or in a fresh S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/store"


def object_versions(s3_server, uri_prefix: str) -> dict[str, tuple]:
    """``{key: (ETag, LastModified)}`` of every object under an S3 prefix, read with a raw client."""
    bucket, _, key = uri_prefix[len("s3://"):].partition("/")
    client = s3_server.client()
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key.rstrip("/") + "/"):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = (obj["ETag"], obj["LastModified"])
    return found


WRITE_OPERATIONS = {"PutObject", "CopyObject", "CreateMultipartUpload", "CompleteMultipartUpload", "DeleteObject",
                    "DeleteObjects"}


@pytest.fixture
def s3_calls(s3_bucket):
    """Names of the S3 operations the storage layer's client performs (recorded until teardown)."""
    from stages.storage.settings import s3_client

    calls: list[str] = []
    client = s3_client()

    def record(model, **kwargs):
        calls.append(model.name)

    client.meta.events.register("before-call.s3", record)
    yield calls
    client.meta.events.unregister("before-call.s3", record)
