"""Fixtures of the storage tests: a root URI on each backend, fault injection, no-sleep retries."""

from __future__ import annotations

import pytest
from botocore.awsrequest import AWSResponse

from stages import storage
from stages.storage import retry
from stages.storage.settings import s3_client


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def root(request, tmp_path) -> str:
    """A folder URI on the local backend or in a fresh S3 bucket (the contract suite runs on both)."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/store"


@pytest.fixture
def s3_events():
    """Register botocore event handlers on the storage layer's current S3 client; unregistered at teardown."""
    registered = []

    def register(event: str, handler) -> None:
        client = s3_client()
        client.meta.events.register(event, handler)
        registered.append((client, event, handler))

    yield register
    for client, event, handler in registered:
        client.meta.events.unregister(event, handler)


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Record the retry loop's backoff delays instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr(retry, "_sleep", recorded.append)
    return recorded


@pytest.fixture
def use_settings():
    """Call ``storage.configure(settings)`` for the test; back to the environment afterwards."""
    yield storage.configure
    storage.configure(None)


class _Raw:
    """The bare minimum of a urllib3 response that botocore reads an injected body from."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, *args, **kwargs):
        yield self.body


def error_response(request, status: int, code: str) -> AWSResponse:
    """An S3 error response, as a ``before-send`` handler returns it instead of sending ``request``."""
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected {code}</Message></Error>'
    ).encode()
    return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Raw(body))
