"""run_stage: skip when up to date, rerun on changed inputs or outputs, marker last, raw prefix never written."""

from __future__ import annotations

import json
import logging
import os
import signal

import pytest

from stages import storage
from stages.errors import BadInputError, TransientError
from stages.stagekit import (
    MARKER_NAME,
    CompletionMarker,
    StageResult,
    WriteGuard,
    marker_uri,
    read_marker,
    run_stage,
)
from tests.stagekit.conftest import WRITE_OPERATIONS


class Counter:
    """A compute function that writes two outputs derived from an input, counting its calls."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.calls = 0

    def __call__(self, out_dir):
        self.calls += 1
        text = storage.read_text(self.source)
        (out_dir / "a.txt").write_text(text.upper())
        (out_dir / "sub").mkdir()
        (out_dir / "sub" / "b.txt").write_text(text[::-1])
        return {"length": len(text)}


def _setup(root: str) -> tuple[str, str, Counter]:
    source = storage.join(root, "in", "data.txt")
    storage.write_text(source, "hello")
    return source, storage.join(root, "out"), Counter(source)


def test_second_run_skips_and_keeps_the_summary(root, tmp_path, caplog):
    source, out, compute = _setup(root)
    result_path = tmp_path / "result.json"
    first = run_stage("demo", {"k": 1}, [source], out, compute, result_path)
    assert first.status == "done" and compute.calls == 1
    assert storage.read_text(storage.join(out, "a.txt")) == "HELLO"
    assert first.outputs == [storage.join(out, "a.txt"), storage.join(out, "sub") + "/"]
    assert first.num_outputs == 2
    assert StageResult.load(result_path) == first
    marker = read_marker(storage.join(out, MARKER_NAME))
    assert marker is not None and marker.input_digest == first.input_digest
    assert sorted(marker.outputs) == ["a.txt", "sub/b.txt"] and marker.extra == {"length": 5}

    with caplog.at_level(logging.INFO, logger="stages.stagekit"):
        second = run_stage("demo", {"k": 1}, [source], out, compute, result_path)
    assert compute.calls == 1 and second.status == "skipped"
    assert "skipped: outputs up to date" in caplog.text
    assert second.extra == {"length": 5} and second.outputs == first.outputs
    assert StageResult.load(result_path).status == "skipped"


def test_changed_input_or_parameter_reruns(root):
    source, out, compute = _setup(root)
    run_stage("demo", {"k": 1}, [source], out, compute)
    storage.write_text(source, "hello world")
    result = run_stage("demo", {"k": 1}, [source], out, compute)
    assert compute.calls == 2 and result.status == "done" and result.extra == {"length": 11}
    assert storage.read_text(storage.join(out, "a.txt")) == "HELLO WORLD"
    run_stage("demo", {"k": 2}, [source], out, compute)
    assert compute.calls == 3
    assert run_stage("demo", {"k": 2}, [source], out, compute).status == "skipped"


def test_modified_or_missing_output_reruns_unless_only_existence_is_checked(root):
    source, out, compute = _setup(root)
    run_stage("demo", {}, [source], out, compute)
    storage.write_text(storage.join(out, "a.txt"), "tampered")
    assert run_stage("demo", {}, [source], out, compute, check_outputs="exists").status == "skipped"
    assert run_stage("demo", {}, [source], out, compute).status == "done"
    assert storage.read_text(storage.join(out, "a.txt")) == "HELLO"
    storage.delete(storage.join(out, "sub/b.txt"))
    assert run_stage("demo", {}, [source], out, compute, check_outputs="exists").status == "done"
    assert compute.calls == 3


def test_failure_mid_upload_leaves_no_marker_and_the_next_run_recomputes(root):
    source, out, compute = _setup(root)
    run_stage("demo", {}, [source], out, compute)
    storage.write_text(source, "changed")  # the next run must recompute and republish
    seen = []

    def failing_publish(out_dir, prefix):
        seen.append(storage.exists(storage.join(prefix, MARKER_NAME)))
        storage.upload_file(out_dir / "a.txt", storage.join(prefix, "a.txt"))
        raise TransientError("connection lost after the first file")

    with pytest.raises(TransientError):
        run_stage("demo", {}, [source], out, compute, publish=failing_publish)
    assert seen == [False]  # the stale marker was gone before anything was uploaded
    assert not storage.exists(storage.join(out, MARKER_NAME))
    result = run_stage("demo", {}, [source], out, compute)
    assert result.status == "done" and compute.calls == 3
    assert storage.read_text(storage.join(out, "sub/b.txt")) == "degnahc"


def test_marker_is_the_last_write(root, monkeypatch):
    source, out, compute = _setup(root)
    writes: list[str] = []
    real_copy, real_write = storage.copy, storage.write_bytes  # upload_tree copies file by file
    monkeypatch.setattr(storage, "copy", lambda src, uri: (writes.append(str(uri)), real_copy(src, uri)))
    monkeypatch.setattr(storage, "write_bytes", lambda uri, data: (writes.append(str(uri)), real_write(uri, data)))
    run_stage("demo", {}, [source], out, compute)
    assert sorted(writes[:-1]) == [storage.join(out, "a.txt"), storage.join(out, "sub/b.txt")]
    assert writes[-1] == storage.join(out, MARKER_NAME)


def test_a_corrupt_marker_counts_as_stale(root):
    source, out, compute = _setup(root)
    run_stage("demo", {}, [source], out, compute)
    storage.write_text(storage.join(out, MARKER_NAME), "{not json")
    assert run_stage("demo", {}, [source], out, compute).status == "done"
    assert CompletionMarker.from_json(storage.read_bytes(storage.join(out, MARKER_NAME))).stage == "demo"


def test_prune_stale_removes_outputs_a_rerun_no_longer_writes(root):
    source = storage.join(root, "in", "names.txt")
    out = storage.join(root, "out")
    storage.write_text(source, "x y z")

    def compute(out_dir):
        for name in storage.read_text(source).split():
            (out_dir / f"{name}.txt").write_text(name)

    run_stage("demo", {}, [source], out, compute, prune_stale=True)
    storage.write_text(storage.join(out, "foreign.txt"), "not ours")
    storage.write_text(source, "x z")
    run_stage("demo", {}, [source], out, compute, prune_stale=True)
    names = sorted(storage.basename(u) for u in storage.list_prefix(out))
    assert names == [MARKER_NAME, "foreign.txt", "x.txt", "z.txt"]


def test_tagged_markers_let_stages_share_a_prefix(root):
    source, out, compute = _setup(root)
    run_stage("one", {}, [source], out, compute, marker=marker_uri(out, "one"))
    run_stage("two", {}, [source], out, compute, marker=marker_uri(out, "two"))
    assert run_stage("one", {}, [source], out, compute, marker=marker_uri(out, "one")).status == "skipped"
    assert storage.exists(storage.join(out, "_NNKUBE_COMPLETE.two.json")) and compute.calls == 2


def test_writes_under_the_raw_prefix_are_refused_before_any_work(root, monkeypatch):
    source, _, compute = _setup(root)
    raw = storage.join(root, "in")
    before = storage.list_prefix(raw)
    guard = WriteGuard([raw])
    with pytest.raises(BadInputError, match="raw-data prefix"):
        run_stage("demo", {}, [source], storage.join(raw, "derived"), compute, guard=guard)
    with pytest.raises(BadInputError, match="raw-data prefix"):
        run_stage("demo", {}, [source], storage.join(root, "out"), compute, storage.join(raw, "r.json"), guard=guard)
    monkeypatch.setenv("NNKUBE_RAW_PREFIX", raw)
    with pytest.raises(BadInputError, match="raw-data prefix"):
        run_stage("demo", {}, [source], raw, compute)
    assert compute.calls == 0 and storage.list_prefix(raw) == before


def test_an_output_escaping_into_the_raw_prefix_is_refused(root):
    source, _, _ = _setup(root)

    def compute(out_dir):
        (out_dir / "in").mkdir()
        (out_dir / "in" / "data.txt").write_text("overwrite the raw data")

    with pytest.raises(BadInputError, match="raw-data prefix"):
        run_stage("demo", {}, [source], root, compute, guard=WriteGuard([storage.join(root, "in")]))
    assert storage.read_text(source) == "hello"


def test_sigterm_becomes_a_transient_error(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("x")

    def compute(out_dir):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM should have interrupted the stage")

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TransientError, match="SIGTERM"):
        run_stage("demo", {}, [str(source)], str(tmp_path / "out"), compute)
    assert signal.getsignal(signal.SIGTERM) is previous
    assert not (tmp_path / "out").exists()


def test_a_stage_without_outputs_always_runs(tmp_path):
    calls = []
    for _ in range(2):
        result = run_stage("check", {"x": 1}, [], None, lambda out: calls.append(1) or {"ok": True},
                           tmp_path / "r.json")
        assert result.status == "done" and result.marker is None and result.extra == {"ok": True}
    assert len(calls) == 2 and json.loads((tmp_path / "r.json").read_text())["stage"] == "check"


@pytest.mark.s3
def test_s3_skip_rewrites_nothing(s3_bucket, s3_server, s3_calls, tmp_path):
    from tests.stagekit.conftest import object_versions

    source, out, compute = _setup(s3_bucket)
    result_uri = storage.join(s3_bucket, "results", "demo.json")
    run_stage("demo", {}, [source], out, compute, result_uri)
    before = object_versions(s3_server, out)
    s3_calls.clear()
    assert run_stage("demo", {}, [source], out, compute, result_uri).status == "skipped"
    writes = [c for c in s3_calls if c in WRITE_OPERATIONS]
    assert writes == ["PutObject"]  # the result document only
    assert object_versions(s3_server, out) == before
    assert StageResult.from_json(storage.read_bytes(result_uri)).status == "skipped"
