"""Logging setup shared by every command: plain text for people, JSON lines for pods.

Stages call :func:`setup_logging` once at the CLI edge. ``NNKUBE_LOG_FORMAT=json`` (set in the container
image) switches to one JSON object per line with the context fields (stage, dataset, configuration, fold)
bound through :func:`bind_context`, which is what a log aggregator behind Argo wants.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_CONTEXT: dict[str, Any] = {}


def bind_context(**fields: Any) -> None:
    """Attach fields (e.g. ``stage="train", fold=0``) to every later log record of this process."""
    _CONTEXT.update({k: v for k, v in fields.items() if v is not None})


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.ctx = dict(_CONTEXT)
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "ctx", {}),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ctx = getattr(record, "ctx", {})
        prefix = " ".join(f"{k}={v}" for k, v in ctx.items())
        base = super().format(record)
        return f"{base} [{prefix}]" if prefix else base


def setup_logging(level: str | int | None = None, fmt: str | None = None) -> None:
    """Configure the root logger once.

    Args:
        level: Log level name or number; defaults to ``NNKUBE_LOG_LEVEL`` or INFO.
        fmt: ``"text"`` or ``"json"``; defaults to ``NNKUBE_LOG_FORMAT`` or text.
    """
    level = level or os.environ.get("NNKUBE_LOG_LEVEL", "INFO")
    fmt = fmt or os.environ.get("NNKUBE_LOG_FORMAT", "text")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
