"""Typed errors shared by every stage, and the process exit codes they map to.

Errors a user can cause (a bad dataset, a missing model, a wrong flag) are :class:`BadInputError` and end the
process with :data:`EXIT_BAD_INPUT` without a traceback; Argo must not retry them. Failures that a retry may
cure (a storage outage, throttling, a pre-empted node) are :class:`TransientError` and end with
:data:`EXIT_TRANSIENT`. Anything else is a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BUG = 1
EXIT_BAD_INPUT = 2
EXIT_TRANSIENT = 75  # EX_TEMPFAIL from sysexits.h


class NnkubeError(Exception):
    """Base class of all errors nnkube raises on purpose."""

    exit_code = EXIT_BUG


class BadInputError(NnkubeError):
    """The input (dataset, model, flag, URI) is wrong; retrying will not help."""

    exit_code = EXIT_BAD_INPUT


class TransientError(NnkubeError):
    """A failure that a later retry may cure (network, throttling, server unavailable)."""

    exit_code = EXIT_TRANSIENT


class StorageError(NnkubeError):
    """A storage operation failed for a reason that is not the caller's input."""


class NotFoundError(BadInputError):
    """A URI (object, key, file or bucket) does not exist."""


class AccessDeniedError(BadInputError):
    """The credentials in use may not access a URI."""


class ChecksumMismatchError(StorageError):
    """Downloaded bytes do not match the sha256 recorded when they were written."""


class DatasetError(BadInputError):
    """A dataset is malformed; the message names every case, file and problem found."""


class SchemaVersionError(BadInputError):
    """A stored typed document has a schema version this code cannot read."""
