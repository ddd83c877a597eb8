"""Connection and retry settings of the S3 backend, and the process-wide cache of boto3 clients.

Settings default to the standard AWS environment variables (``AWS_ENDPOINT_URL_S3`` wins over
``AWS_ENDPOINT_URL``). Credentials left unset fall through to boto3's own chain (profile, web identity, instance
role), which is what a Kubernetes pod with a service-account role needs. :func:`configure` pins explicit settings
for the whole process; ``configure(None)`` goes back to the environment.
"""

from __future__ import annotations

import os
import threading
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's minimum size of every part but the last


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def _env_secret(name: str) -> SecretStr | None:
    value = _env(name)
    return SecretStr(value) if value is not None else None


class StorageSettings(BaseModel):
    """How to reach S3 and how hard to try.

    Every field not given explicitly is read from the environment when the object is built.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint_url: str | None = Field(
        default_factory=lambda: _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        description="S3 endpoint (e.g. http://seaweedfs:8333); None means AWS itself.",
    )
    access_key_id: str | None = Field(
        default_factory=lambda: _env("AWS_ACCESS_KEY_ID"),
        description="Access key; None lets boto3 find credentials itself.",
    )
    secret_access_key: SecretStr | None = Field(
        default_factory=lambda: _env_secret("AWS_SECRET_ACCESS_KEY"), description="Secret key."
    )
    session_token: SecretStr | None = Field(
        default_factory=lambda: _env_secret("AWS_SESSION_TOKEN"), description="Session token, if any."
    )
    region: str = Field(
        default_factory=lambda: _env("AWS_DEFAULT_REGION", "AWS_REGION") or "us-east-1",
        description="Region used to sign requests.",
    )
    addressing_style: Literal["auto", "path", "virtual"] | None = Field(
        default=None, description="Bucket addressing; None means path-style with a custom endpoint, else auto."
    )
    max_attempts: int = Field(default=5, ge=1, description="Attempts per request, the first one included.")
    base_delay: float = Field(default=0.2, ge=0, description="Backoff before the 2nd attempt, seconds.")
    max_delay: float = Field(default=10.0, ge=0, description="Cap on one backoff delay, seconds.")
    connect_timeout: float = Field(default=10.0, gt=0, description="TCP connect timeout, seconds.")
    read_timeout: float = Field(default=60.0, gt=0, description="Socket read timeout, seconds.")
    multipart_threshold: int = Field(default=16 * MiB, ge=1, description="Objects this large use multipart.")
    multipart_chunksize: int = Field(default=8 * MiB, ge=MIN_PART_SIZE, description="Size of one part.")
    max_concurrency: int = Field(default=4, ge=1, description="Parts of one upload in flight at once.")
    page_size: int = Field(default=1000, ge=1, le=1000, description="Keys per list request.")


_lock = threading.Lock()
_configured: StorageSettings | None = None
_clients: dict[StorageSettings, object] = {}


def configure(settings: StorageSettings | None) -> None:
    """Use ``settings`` for every storage call in this process (``None``: read the environment again)."""
    global _configured
    with _lock:
        _configured = settings


def current_settings() -> StorageSettings:
    """The settings in force: those given to :func:`configure`, else fresh ones from the environment."""
    with _lock:
        configured = _configured
    return configured if configured is not None else StorageSettings()


def s3_client(settings: StorageSettings | None = None):
    """Return the boto3 S3 client for ``settings`` (default: :func:`current_settings`), cached and shared.

    botocore's own retries are switched off (``total_max_attempts=1``) so that the retry loop of this package
    is the only one in force; request checksums are computed only where S3 requires them, which keeps the
    client compatible with S3 servers other than AWS.
    """
    settings = settings or current_settings()
    with _lock:
        client = _clients.get(settings)
        if client is None:
            client = _make_client(settings)
            _clients[settings] = client
    return client


def _make_client(settings: StorageSettings):
    import boto3
    from botocore.config import Config

    style = settings.addressing_style or ("path" if settings.endpoint_url else "auto")
    config = Config(
        region_name=settings.region,
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=64,
        s3={"addressing_style": style},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=(settings.secret_access_key.get_secret_value() if settings.secret_access_key else None),
        aws_session_token=settings.session_token.get_secret_value() if settings.session_token else None,
        config=config,
    )
