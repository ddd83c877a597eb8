"""Run one stage idempotently: skip when its outputs are up to date, else compute, publish, then mark complete.

A stage's outputs live under an output prefix. After every output is uploaded, a completion marker
(``<output prefix>/_NNKUBE_COMPLETE.json``, or ``_NNKUBE_COMPLETE.<tag>.json`` where several stages or shards
share a prefix) is written LAST; it records the stage, the input digest (parameters + input identities), every
output with its content identity and the stage's summary (``extra``). A later run with the same digest whose
outputs are still there unchanged skips its work; any other run deletes the marker first, so an interrupted
run never leaves a marker that vouches for half-written outputs.

Every run ends by writing a :class:`StageResult` to ``--result-json`` (a local path or URI) for Argo output
parameters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from stages import storage
from stages.documents import Document
from stages.errors import BadInputError, NotFoundError, TransientError
from stages.log import bind_context
from stages.stagekit.guard import WriteGuard, protected_prefixes
from stages.stagekit.identity import identities_of, input_digest

log = logging.getLogger(__name__)

MARKER_NAME = "_NNKUBE_COMPLETE.json"
MARKER_GLOB = "_NNKUBE_COMPLETE*.json"  # every marker, tagged or not
SCRATCH_ENV = "NNKUBE_SCRATCH_DIR"

ComputeFn = Callable[[Path], "dict[str, Any] | None"]
PublishFn = Callable[[Path, str], None]
OutputCheck = Literal["identity", "exists"]


class CompletionMarker(Document):
    """What a completed stage run recorded under its output prefix (written after every output)."""

    KIND = "completion marker"
    SCHEMA_VERSION = 1

    stage: str = Field(description="Stage name, e.g. 'preprocess'.")
    input_digest: str = Field(description="Digest of the parameters and input identities the outputs came from.")
    outputs: dict[str, str] = Field(description="Output name relative to the output prefix -> content identity.")
    extra: dict[str, Any] = Field(default_factory=dict, description="The stage's summary, returned on a skip.")
    completed_at: str = Field(description="UTC time the run completed (ISO 8601).")
    seconds: float = Field(description="Wall time of the run that produced the outputs.")


class StageResult(Document):
    """The small JSON a stage writes to ``--result-json`` (Argo output parameters read it)."""

    KIND = "stage result"
    SCHEMA_VERSION = 1

    stage: str = Field(description="Stage name.")
    status: Literal["done", "skipped"] = Field(description="'skipped' when the outputs were already up to date.")
    outputs: list[str] = Field(
        default_factory=list,
        description="URIs of the top-level outputs under the output prefix (files, and folders ending in '/'), "
        "sorted; small enough for an Argo output parameter however many files a folder holds.",
    )
    num_outputs: int = Field(0, description="Number of output files in all.")
    input_digest: str = Field(description="Digest of the parameters and input identities.")
    seconds: float = Field(description="Wall time of this run.")
    marker: str | None = Field(default=None, description="URI of the completion marker, if the stage has outputs.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Stage-specific summary (counts, scores ...).")


def _top_level(output_prefix: str, names) -> list[str]:
    """Top-level entries (``file`` or ``folder/``) of output names relative to the prefix, as URIs."""
    tops = {n.split("/", 1)[0] + ("/" if "/" in n else "") for n in names}
    return [storage.join(output_prefix, t) + ("/" if t.endswith("/") else "") for t in sorted(tops)]


def marker_uri(output_prefix: str, tag: str | None = None) -> str:
    """URI of the completion marker: ``<prefix>/_NNKUBE_COMPLETE.json`` or ``.../_NNKUBE_COMPLETE.<tag>.json``."""
    name = MARKER_NAME if not tag else f"_NNKUBE_COMPLETE.{tag}.json"
    return storage.join(output_prefix, name)


def read_marker(uri: str) -> CompletionMarker | None:
    """The completion marker at ``uri``, or None if absent or unreadable (an unreadable one counts as stale)."""
    try:
        text = storage.read_bytes(uri)
    except NotFoundError:
        return None
    try:
        return CompletionMarker.from_json(text, source=uri)
    except BadInputError as exc:
        log.warning("completion marker %s is unreadable (%s); treating the outputs as stale", uri, exc)
        return None


@contextlib.contextmanager
def scratch_dir(label: str) -> Iterator[Path]:
    """A temporary local folder (under ``$NNKUBE_SCRATCH_DIR`` when set), removed on exit."""
    base = os.environ.get(SCRATCH_ENV) or None
    if base:
        os.makedirs(base, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"nnkube-{label}-", dir=base) as scratch:
        yield Path(scratch)


@contextlib.contextmanager
def terminate_as_transient() -> Iterator[None]:
    """Turn the first SIGTERM into a :class:`TransientError` (exit 75, Argo retries); later ones are logged.

    Only the main thread can install signal handlers; elsewhere this does nothing. Code that handles SIGTERM
    itself (the trainer saves a checkpoint first) installs its own handler inside and restores this one.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal fired
        if fired:
            log.warning("SIGTERM received again; still shutting down")
            return
        fired = True
        raise TransientError("terminated by SIGTERM (pod pre-empted or deleted); a retry continues the work")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def relative_files(folder: Path) -> list[str]:
    """Sorted POSIX names of every file below ``folder``."""
    names = []
    for dirpath, _dirs, files in os.walk(folder):
        rel = os.path.relpath(dirpath, folder)
        for name in files:
            names.append(name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}")
    return sorted(names)


def _outputs_changed(marker: CompletionMarker, output_prefix: str, check: OutputCheck) -> str | None:
    """Why the recorded outputs are no longer as the marker says, or None if they are."""
    try:
        now = identities_of(output_prefix, marker.outputs)
    except NotFoundError as exc:
        return str(exc)
    if check == "identity":
        changed = [n for n, ident in marker.outputs.items() if now[n] != ident]
        if changed:
            return f"{storage.join(output_prefix, changed[0])} was modified ({len(changed)} output(s) differ)"
    return None


def write_result(result: StageResult, result_json: str | os.PathLike | None, guard: WriteGuard) -> None:
    """Write ``result`` to ``result_json`` (a local path or URI) when one is given."""
    if result_json is None:
        return
    storage.write_text(guard.check(os.fspath(result_json)), result.to_json())


def _upload(out_dir: Path, output_prefix: str) -> None:
    storage.upload_tree(out_dir, output_prefix)


def run_stage(
    name: str,
    params: dict[str, Any],
    inputs: Sequence[str],
    output_prefix: str | None,
    compute_fn: ComputeFn,
    result_json: str | os.PathLike | None = None,
    *,
    marker: str | None = None,
    guard: WriteGuard | None = None,
    publish: PublishFn | None = None,
    check_outputs: OutputCheck = "identity",
    prune_stale: bool = False,
) -> StageResult:
    """Run a stage unless its outputs are up to date; publish its outputs, then its completion marker.

    Args:
        name: Stage name (logs, marker, result).
        params: Parameters that change the outputs (part of the input digest).
        inputs: URIs (files, objects, prefixes) the stage reads (their identities enter the digest).
        output_prefix: Folder/prefix receiving the outputs; None for a stage without outputs (never skipped).
        compute_fn: Called with an empty local folder; writes the outputs there (paths relative to the
            output prefix) and returns the stage's summary (``extra``) or None.
        result_json: Local path or URI receiving the :class:`StageResult`.
        marker: URI of the completion marker (default ``<output_prefix>/_NNKUBE_COMPLETE.json``).
        guard: Refuses writes under raw-data prefixes (default: ``$NNKUBE_RAW_PREFIX`` only).
        publish: Replaces the default upload (``storage.upload_tree(folder, output_prefix)``).
        check_outputs: On a matching digest, "identity" also requires every output to be unchanged;
            "exists" only that it still exists (for outputs a later stage may legitimately rewrite).
        prune_stale: After publishing, delete outputs the previous marker listed that this run did not write.

    Returns:
        The result (also written to ``result_json``).

    Raises:
        BadInputError: An output, the marker or the result would land under a protected prefix.
        TransientError: SIGTERM arrived, or storage kept failing transiently.
    """
    start = time.monotonic()
    bind_context(stage=name)
    guard = guard or WriteGuard(protected_prefixes())
    mark = None
    if output_prefix is not None:
        guard.check(output_prefix)
        mark = guard.check(marker or marker_uri(output_prefix))
    if result_json is not None:
        guard.check(os.fspath(result_json))
    log.info("started: %d input(s)%s", len(inputs), f", outputs under {output_prefix}" if output_prefix else "")
    with terminate_as_transient():
        digest = input_digest(params, inputs)
        old = read_marker(mark) if mark else None
        if old is not None:
            reason = "inputs or parameters changed" if old.input_digest != digest or old.stage != name else None
            reason = reason or _outputs_changed(old, output_prefix, check_outputs)
            if reason is None:
                log.info("skipped: outputs up to date (%s)", mark)
                result = StageResult(
                    stage=name, status="skipped", outputs=_top_level(output_prefix, old.outputs),
                    num_outputs=len(old.outputs),
                    input_digest=digest, seconds=round(time.monotonic() - start, 3), marker=mark, extra=old.extra,
                )
                write_result(result, result_json, guard)
                return result
            log.info("recomputing: %s since the last run (%s)", reason, mark)
        if mark is not None:
            storage.delete(mark)  # also an unreadable one: no marker may vouch for what follows
        extra, outputs = _compute_and_publish(name, compute_fn, output_prefix, guard, publish)
        if prune_stale and old is not None:
            _prune(output_prefix, sorted(set(old.outputs) - set(outputs)), guard)
        seconds = round(time.monotonic() - start, 3)
        if mark is not None:
            done = CompletionMarker(
                stage=name, input_digest=digest, outputs=outputs, extra=extra, seconds=seconds,
                completed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            )
            storage.write_text(mark, done.to_json())  # last: it vouches for everything written before
        result = StageResult(
            stage=name, status="done", outputs=_top_level(output_prefix, outputs), num_outputs=len(outputs),
            input_digest=digest, seconds=seconds, marker=mark, extra=extra,
        )
        write_result(result, result_json, guard)
        log.info("done in %.1f s: %d output(s)%s", seconds, len(outputs), f" under {output_prefix}" if mark else "")
        return result


def _compute_and_publish(name: str, compute_fn: ComputeFn, output_prefix: str | None, guard: WriteGuard,
                         publish: PublishFn | None) -> tuple[dict[str, Any], dict[str, str]]:
    """Run ``compute_fn`` in scratch and publish what it wrote; return its summary and the outputs' identities."""
    with scratch_dir(name) as scratch:
        out_dir = scratch / "out"
        out_dir.mkdir()
        extra = compute_fn(out_dir) or {}
        if output_prefix is None:
            return extra, {}
        names = relative_files(out_dir)
        guard.check_all(storage.join(output_prefix, n) for n in names)
        (publish or _upload)(out_dir, output_prefix)
        return extra, identities_of(output_prefix, names)


def _prune(output_prefix: str, stale: list[str], guard: WriteGuard) -> None:
    """Delete outputs of a previous run that this run no longer writes."""
    for name in stale:
        uri = guard.check(storage.join(output_prefix, name))
        storage.delete(uri)
        log.info("removed stale output %s", uri)
