"""Retries: classification, backoff, and injected faults against the real server."""

from __future__ import annotations

import threading

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from stages import storage
from stages.errors import AccessDeniedError, NotFoundError, StorageError, TransientError
from stages.storage import retry
from stages.storage.settings import MiB
from tests.storage.conftest import error_response


def _client_error(status: int, code: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (_client_error(500, "InternalError"), True),
        (_client_error(503, "SlowDown"), True),
        (_client_error(400, "RequestTimeout"), True),
        (_client_error(400, "ThrottlingException"), True),
        (_client_error(429, "TooManyRequests"), True),
        (_client_error(404, "NoSuchKey"), False),
        (_client_error(403, "AccessDenied"), False),
        (_client_error(400, "InvalidArgument"), False),
        (EndpointConnectionError(endpoint_url="http://x"), True),
        (ReadTimeoutError(endpoint_url="http://x"), True),
        (ConnectionResetError(104, "reset"), True),
        (ConnectionRefusedError(111, "refused"), True),
        (ValueError("bug"), False),
    ],
)
def test_is_transient(exc, transient):
    assert retry.is_transient(exc) is transient


@pytest.mark.parametrize(
    ("status", "code", "op", "expected", "fragment"),
    [
        (404, "NoSuchBucket", "get_object", NotFoundError, "bucket 'b' does not exist (s3://b/k)"),
        (404, "404", "head_bucket", NotFoundError, "bucket 'b' does not exist (s3://b/k)"),
        (404, "NoSuchKey", "get_object", NotFoundError, "s3://b/k does not exist"),
        (404, "404", "head_object", NotFoundError, "s3://b/k does not exist"),
        (403, "SignatureDoesNotMatch", "get_object", AccessDeniedError, "access denied to s3://b/k"),
        (403, "InvalidAccessKeyId", "put_object", AccessDeniedError, "access denied to s3://b/k"),
        (403, "403", "head_object", AccessDeniedError, "access denied to s3://b/k"),
        (400, "InvalidArgument", "put_object", StorageError, "put_object s3://b/k failed: InvalidArgument"),
    ],
)
def test_translate(status, code, op, expected, fragment):
    mapped = retry.translate(_client_error(status, code), op, "s3://b/k")
    assert type(mapped) is expected
    assert fragment in str(mapped)


def test_backoff_grows_with_jitter_and_is_capped():
    for attempt in range(1, 12):
        nominal = min(2.0, 0.2 * 2 ** (attempt - 1))
        delays = [retry.backoff_delay(attempt, 0.2, 2.0) for _ in range(50)]
        assert all(nominal / 2 <= d <= nominal for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_call_with_retries_recovers_after_transient_failures(sleeps):
    outcomes = [_client_error(503, "SlowDown"), ConnectionResetError(104, "reset"), "ok"]

    def flaky():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert retry.call_with_retries("get_object", "s3://b/k", flaky, max_attempts=5, base_delay=0.2, max_delay=5) == "ok"
    assert len(sleeps) == 2
    assert 0.1 <= sleeps[0] <= 0.2 and 0.2 <= sleeps[1] <= 0.4


def test_call_with_retries_gives_up_with_a_transient_error(sleeps):
    calls = []

    def always_down():
        calls.append(1)
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    with pytest.raises(TransientError, match=r"put_object s3://b/k failed after 4 attempts") as info:
        retry.call_with_retries("put_object", "s3://b/k", always_down, max_attempts=4, base_delay=0.1, max_delay=1)
    assert isinstance(info.value.__cause__, EndpointConnectionError)
    assert len(calls) == 4 and len(sleeps) == 3


def test_call_with_retries_does_not_retry_permanent_errors(sleeps):
    calls = []

    def missing():
        calls.append(1)
        raise _client_error(404, "NoSuchKey")

    with pytest.raises(NotFoundError, match="s3://b/k"):
        retry.call_with_retries("get_object", "s3://b/k", missing, max_attempts=5, base_delay=0.1, max_delay=1)
    assert len(calls) == 1 and not sleeps


# -- faults injected into real requests (botocore before-send hooks) ------------------------------------------


class _Injector:
    """A before-send handler that answers the first ``times`` matching requests with an error itself."""

    def __init__(self, times: int, status: int = 503, code: str = "SlowDown", raise_exc=None, match=None):
        self.times, self.status, self.code, self.raise_exc, self.match = times, status, code, raise_exc, match
        self.seen = 0
        self.lock = threading.Lock()

    def __call__(self, request, **kwargs):
        if self.match and self.match not in request.url:
            return None
        with self.lock:
            self.seen += 1
            inject = self.seen <= self.times
        if not inject:
            return None
        if self.raise_exc is not None:
            raise self.raise_exc
        return error_response(request, self.status, self.code)


@pytest.mark.s3
def test_throttled_put_is_retried_until_it_lands(s3_bucket, s3_events, sleeps):
    injector = _Injector(times=2, status=503, code="SlowDown")
    s3_events("before-send.s3.PutObject", injector)
    uri = storage.join(s3_bucket, "throttled.txt")
    storage.write_text(uri, "made it")
    assert injector.seen == 3
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] / 2
    assert storage.read_text(uri) == "made it"


@pytest.mark.s3
def test_persistent_5xx_becomes_transient_error_after_max_attempts(s3_server, s3_bucket, s3_events, sleeps):
    uri = storage.join(s3_bucket, "down.txt")
    storage.write_text(uri, "x")
    injector = _Injector(times=100, status=500, code="InternalError")
    s3_events("before-send.s3.GetObject", injector)
    with pytest.raises(TransientError) as info:
        storage.read_bytes(uri)
    assert "get_object" in str(info.value) and uri in str(info.value) and "InternalError" in str(info.value)
    assert injector.seen == storage.current_settings().max_attempts == 5  # botocore did not retry on its own
    assert len(sleeps) == 4


@pytest.mark.s3
def test_connection_errors_and_head_5xx_are_retried(s3_bucket, s3_events, sleeps):
    uri = storage.join(s3_bucket, "here.txt")
    storage.write_text(uri, "x")
    refused = _Injector(times=2, raise_exc=EndpointConnectionError(endpoint_url="http://injected"))
    s3_events("before-send.s3.HeadObject", refused)
    assert storage.exists(uri)
    assert refused.seen == 3
    unavailable = _Injector(times=1, status=503, code="ServiceUnavailable")
    s3_events("before-send.s3.ListObjectsV2", unavailable)
    assert storage.list_prefix(s3_bucket) == [uri]
    assert unavailable.seen == 2


@pytest.mark.s3
def test_a_throttled_part_is_retried_alone(s3_server, s3_bucket, s3_events, use_settings, sleeps):
    use_settings(s3_server.settings(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2))
    injector = _Injector(times=1, status=503, code="SlowDown", match="partNumber=2")
    s3_events("before-send.s3.UploadPart", injector)
    data = bytes(range(256)) * (11 * MiB // 256)
    uri = storage.join(s3_bucket, "parts.bin")
    storage.write_bytes(uri, data)
    assert injector.seen == 2
    assert storage.read_bytes(uri) == data
