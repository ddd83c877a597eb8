"""Retry with exponential backoff and jitter, and translation of S3 failures into nnkube errors.

Transient failures (HTTP 5xx, throttling, request timeouts, refused/reset connections, read timeouts) are
retried up to ``max_attempts`` times and then raised as :class:`~stages.errors.TransientError`. Everything else is
translated at once: a missing bucket or key becomes :class:`~stages.errors.NotFoundError`, a rejected credential
:class:`~stages.errors.AccessDeniedError`, any other S3 error :class:`~stages.errors.StorageError`; each message
names the URI.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from stages.errors import AccessDeniedError, NotFoundError, StorageError, TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")

THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
    }
)
ACCESS_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "403"}
)
MISSING_KEY_CODES = frozenset({"NoSuchKey", "NotFound", "404"})

# Indirection so that tests can observe delays without sleeping.
_sleep = time.sleep


def error_code(exc: ClientError) -> tuple[str, int]:
    """Return ``(code, http_status)`` of a botocore ``ClientError``."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return code, status


def is_transient(exc: BaseException) -> bool:
    """Tell whether a failure may go away on its own (so a retry makes sense)."""
    if isinstance(exc, ClientError):
        code, status = error_code(exc)
        return status >= 500 or status == 429 or code in THROTTLE_CODES
    return isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError, ConnectionError, TimeoutError))


def describe(exc: BaseException) -> str:
    """A one-line description of a failure for error messages."""
    if isinstance(exc, ClientError):
        code, status = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        return f"{code} (HTTP {status}){': ' + message if message else ''}"
    return f"{type(exc).__name__}: {exc}"


def translate(exc: BaseException, op: str, uri: str) -> BaseException:
    """Map a non-transient failure to an nnkube error naming ``uri``; other exceptions come back unchanged.

    Args:
        exc: The failure.
        op: The S3 operation (``get_object``, ``head_bucket``, ...), used in messages.
        uri: The URI the operation worked on.
    """
    if not isinstance(exc, ClientError):
        return exc
    code, status = error_code(exc)
    if code == "NoSuchBucket" or (op == "head_bucket" and status == 404):
        bucket = uri[len("s3://") :].split("/", 1)[0]
        return NotFoundError(f"bucket {bucket!r} does not exist ({uri})")
    if code in MISSING_KEY_CODES or (status == 404 and code != "NoSuchUpload"):
        return NotFoundError(f"{uri} does not exist")
    if code in ACCESS_CODES or status == 403:
        return AccessDeniedError(
            f"access denied to {uri} ({describe(exc)}); check the S3 credentials and their permissions"
        )
    return StorageError(f"{op} {uri} failed: {describe(exc)}")


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Delay before attempt ``attempt + 1``: ``base * 2**(attempt-1)`` capped, with "equal jitter".

    The result lies in ``[d/2, d]`` where ``d = min(cap, base * 2**(attempt-1))``, so delays grow but parallel
    clients do not retry in lock-step.
    """
    d = min(cap, base * (2 ** (attempt - 1)))
    return d / 2 + random.uniform(0, d / 2)


def call_with_retries(
    op: str, uri: str, fn: Callable[[], T], *, max_attempts: int, base_delay: float, max_delay: float
) -> T:
    """Run ``fn`` and retry it on transient failures.

    Args:
        op: Operation name for messages (e.g. ``"put_object"``).
        uri: The URI worked on, for messages.
        fn: The operation; called once per attempt.
        max_attempts: Attempts in all, the first one included.
        base_delay: Backoff before the second attempt, seconds.
        max_delay: Cap on one backoff delay, seconds.

    Returns:
        What ``fn`` returns.

    Raises:
        TransientError: Every attempt failed with a transient error.
        NotFoundError, AccessDeniedError, StorageError: A non-transient S3 error (see :func:`translate`).
    """
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                mapped = translate(exc, op, uri)
                if mapped is exc:
                    raise
                raise mapped from exc
            if attempt >= max_attempts:
                raise TransientError(
                    f"{op} {uri} failed after {attempt} attempt{'s' if attempt > 1 else ''}: {describe(exc)}"
                ) from exc
            delay = backoff_delay(attempt, base_delay, max_delay)
            log.warning(
                "%s %s: attempt %d/%d failed (%s); retrying in %.2f s",
                op,
                uri,
                attempt,
                max_attempts,
                describe(exc),
                delay,
            )
            _sleep(delay)
            attempt += 1
