"""StorageSettings from the environment, process-wide configuration, the client cache."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError

from stages import storage
from stages.storage.settings import StorageSettings, s3_client


@pytest.fixture
def clean_env(monkeypatch):
    for name in (
        "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_come_from_the_aws_environment(clean_env):
    clean_env.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AKID")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    clean_env.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    s = StorageSettings()
    assert (s.endpoint_url, s.access_key_id, s.region) == ("http://generic:1", "AKID", "eu-west-3")
    assert s.secret_access_key.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(s)
    clean_env.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:2")
    assert StorageSettings().endpoint_url == "http://s3-specific:2"
    assert StorageSettings(endpoint_url="http://explicit:3").endpoint_url == "http://explicit:3"


def test_unset_environment_leaves_credentials_to_boto3(clean_env):
    s = StorageSettings()
    assert s.endpoint_url is None and s.access_key_id is None and s.secret_access_key is None
    assert s.region == "us-east-1"
    assert (s.max_attempts, s.base_delay) == (5, 0.2)


def test_invalid_settings_are_rejected():
    with pytest.raises(ValidationError):
        StorageSettings(multipart_chunksize=1024)  # below S3's 5 MiB part minimum
    with pytest.raises(ValidationError):
        StorageSettings(max_attempts=0)
    with pytest.raises(ValidationError):
        StorageSettings(unknown=1)


def test_configure_pins_settings_process_wide(clean_env, use_settings):
    clean_env.setenv("AWS_ENDPOINT_URL", "http://from-env:1")
    assert storage.current_settings().endpoint_url == "http://from-env:1"
    pinned = StorageSettings(endpoint_url="http://pinned:2")
    use_settings(pinned)
    assert storage.current_settings() is pinned
    storage.configure(None)
    assert storage.current_settings().endpoint_url == "http://from-env:1"


def test_clients_are_cached_per_settings_and_shared_across_threads(clean_env):
    a = StorageSettings(endpoint_url="http://a:1", access_key_id="k", secret_access_key="s")
    same = StorageSettings(endpoint_url="http://a:1", access_key_id="k", secret_access_key="s")
    other = StorageSettings(endpoint_url="http://a:1", access_key_id="k", secret_access_key="s", max_attempts=2)
    with ThreadPoolExecutor(max_workers=8) as pool:
        clients = list(pool.map(lambda _: s3_client(a), range(32)))
    assert all(c is clients[0] for c in clients)
    assert s3_client(same) is clients[0]
    assert s3_client(other) is not clients[0]
    config = clients[0].meta.config
    assert config.retries["total_max_attempts"] == 1
    assert config.s3["addressing_style"] == "path"
    assert clients[0].meta.endpoint_url == "http://a:1"
