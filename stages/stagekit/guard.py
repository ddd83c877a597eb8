"""The raw-data guard: no stage ever writes below a protected (raw-data) prefix.

The protected prefixes are the stage's own dataset input (a stage never writes into what it reads as raw data)
plus those given with ``--raw-prefix`` or the ``NNKUBE_RAW_PREFIX`` environment variable (comma-separated), so
a workflow can protect the bucket prefix holding the users' original data once for every stage.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from stages import storage
from stages.errors import BadInputError

log = logging.getLogger(__name__)

RAW_PREFIX_ENV = "NNKUBE_RAW_PREFIX"


def _normalize(uri: str) -> str:
    """Canonical form for prefix comparison: S3 without a trailing ``/``, local paths resolved and absolute."""
    text = str(uri)
    if storage.is_s3(text):
        return text.rstrip("/")
    return os.path.realpath(os.path.abspath(storage.to_local_path(text)))


def is_under(uri: str, prefix: str) -> bool:
    """Tell whether ``uri`` is ``prefix`` itself or lies below it (folder semantics; never across schemes)."""
    if storage.is_s3(uri) != storage.is_s3(prefix):
        return False
    u, p = _normalize(uri), _normalize(prefix)
    if storage.is_s3(uri):
        return u == p or u.startswith(p + "/")
    return u == p or u.startswith(p.rstrip(os.sep) + os.sep)


def split_prefixes(value: str | None) -> list[str]:
    """Comma-separated prefixes (``--raw-prefix`` / ``NNKUBE_RAW_PREFIX``) as a list, blanks dropped."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def protected_prefixes(raw_prefix: str | None = None, dataset_inputs: Iterable[str | None] = ()) -> list[str]:
    """The prefixes a stage must not write: ``raw_prefix`` (else ``$NNKUBE_RAW_PREFIX``) and its dataset inputs.

    Args:
        raw_prefix: Value of ``--raw-prefix`` (comma-separated); None falls back to the environment variable.
        dataset_inputs: The raw-dataset URIs the stage reads (None entries are ignored).
    """
    configured = split_prefixes(raw_prefix if raw_prefix is not None else os.environ.get(RAW_PREFIX_ENV))
    ordered = [*configured, *(str(d) for d in dataset_inputs if d)]
    return list(dict.fromkeys(ordered))


class WriteGuard:
    """Refuses writes below any protected prefix.

    Args:
        protected: Prefixes (S3 or local) that must never be written.
    """

    def __init__(self, protected: Iterable[str]) -> None:
        self.protected = [str(p) for p in protected if p]

    def check(self, uri: str | os.PathLike) -> str:
        """Return ``uri`` as a string if writing it is allowed.

        Raises:
            BadInputError: ``uri`` lies under a protected prefix (the message names both).
        """
        text = os.fspath(uri)
        for prefix in self.protected:
            if is_under(text, prefix):
                raise BadInputError(
                    f"refusing to write {text}: it lies under the raw-data prefix {prefix}, which stages never "
                    f"write; choose an output outside it"
                )
        return text

    def check_all(self, uris: Iterable[str | os.PathLike]) -> None:
        """Check every URI (see :meth:`check`)."""
        for uri in uris:
            self.check(uri)
