"""The S3 server dies in the middle of a multipart upload: the call fails, and nothing lands under the key."""

from __future__ import annotations

import logging
import threading

import pytest

from stages import storage
from stages.errors import TransientError
from stages.storage.settings import MiB
from tests.s3server import SeaweedServer, weed_binary

pytestmark = [pytest.mark.s3, pytest.mark.skipif(weed_binary() is None, reason="weed binary not installed")]


def test_server_killed_mid_upload_leaves_no_object(tmp_path, s3_events, use_settings, caplog):
    server = SeaweedServer(tmp_path / "seaweedfs")  # its own server: this test kills it
    server.start()
    try:
        bucket = server.create_bucket()
        use_settings(
            server.settings(
                max_attempts=3,
                base_delay=0.05,
                max_delay=0.2,
                connect_timeout=1,
                read_timeout=5,
                multipart_threshold=5 * MiB,
                multipart_chunksize=5 * MiB,
                max_concurrency=1,
            )
        )
        src = tmp_path / "big.bin"
        src.write_bytes(bytes(range(256)) * (30 * MiB // 256))  # 6 parts
        third_part_sends = []
        lock = threading.Lock()

        def kill_at_part_3(request, **kwargs):
            if "partNumber=3" in request.url:
                with lock:
                    third_part_sends.append(1)
                    if server.running:
                        server.stop()  # SIGKILL; this very request then meets a dead server

        s3_events("before-send.s3.UploadPart", kill_at_part_3)
        uri = f"s3://{bucket}/results/model_final.pth"
        with caplog.at_level(logging.WARNING, logger="stages.storage"):
            with pytest.raises(TransientError) as info:
                storage.upload_file(src, uri)
        assert "upload_part" in str(info.value) and uri in str(info.value)
        assert len(third_part_sends) == 3  # our three attempts, no hidden botocore retries
        assert "could not abort multipart upload" in caplog.text

        with pytest.raises(TransientError, match="put_object"):
            storage.write_bytes(f"s3://{bucket}/results/small.json", b"{}")

        server.start()  # same ports, same data
        assert storage.list_prefix(f"s3://{bucket}") == []
        assert not storage.exists(uri)
        storage.write_bytes(f"s3://{bucket}/after.txt", b"alive")  # the restarted server does list objects
        assert storage.list_prefix(f"s3://{bucket}") == [f"s3://{bucket}/after.txt"]
    finally:
        server.stop()
