"""A bounded process pool over cases that names the case whose worker died.

:func:`map_cases` runs ``fn(case_id, *args)`` for many cases in at most ``num_workers`` processes and keeps at
most ``2 * num_workers`` submissions in flight, so memory stays bounded by the workers, not by the number of
cases. A worker killed by the operating system (e.g. out of memory) breaks a :class:`ProcessPoolExecutor`; every
case a worker starts is recorded as a small marker file that the worker removes when it finishes (also when it is
terminated by the pool), so after the pool broke the remaining markers name the case that was running in the
dead worker, and :class:`WorkerDiedError` says so instead of a bare ``BrokenProcessPool`` or a hang.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from tqdm import tqdm

from stages.errors import NnkubeError

log = logging.getLogger(__name__)

#: Test-only hook: a worker about to process the case with this id exits at once as if killed (exit 137).
CRASH_CASE_ENV = "NNKUBE_TEST_CRASH_CASE"

_current_marker: Path | None = None


class WorkerDiedError(NnkubeError):
    """A worker process ended abruptly (killed by the OS, e.g. out of memory, or crashed in native code)."""


def _on_sigterm(signum: int, _frame: Any) -> None:
    # The pool terminates surviving workers after one died: clear this worker's marker so it is not blamed.
    if _current_marker is not None:
        try:
            _current_marker.unlink()
        except OSError:
            pass
    os._exit(128 + signum)


def _init_worker() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)


def _run_marked(fn: Callable[..., Any], case_id: str, args: tuple, marker_dir: str, crash_case: str | None
                ) -> tuple[Any, int]:
    """Worker side: record the running case in a marker file, run ``fn``, remove the marker.

    Returns:
        ``(fn's result, this worker's peak resident memory in KiB so far)``.
    """
    global _current_marker
    marker = Path(marker_dir) / case_id
    _current_marker = marker  # set first: a SIGTERM from now on removes whatever exists of the marker
    marker.write_text(str(os.getpid()))
    try:
        if crash_case is not None and crash_case == case_id:
            os._exit(137)
        result = fn(case_id, *args)
        return result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    finally:
        _current_marker = None
        marker.unlink(missing_ok=True)


def _context(preload: Sequence[str]) -> mp.context.BaseContext:
    """``forkserver`` on Linux (workers fork from a clean server with ``preload`` imported), else ``spawn``."""
    if sys.platform.startswith("linux"):
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(preload))  # only takes effect when the server starts
        return ctx
    return mp.get_context("spawn")  # pragma: no cover


def map_cases(
    fn: Callable[..., Any],
    items: Sequence[tuple[str, tuple]],
    num_workers: int,
    desc: str = "cases",
    marker_root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run ``fn(case_id, *args)`` for every ``(case_id, args)`` in a bounded process pool.

    Args:
        fn: A module-level (picklable) function.
        items: ``(case_id, args)`` pairs; case ids must be usable as file names.
        num_workers: Maximum number of worker processes (at least 1).
        desc: Label of the progress bar and log lines.
        marker_root: Folder for the temporary marker files (default: the system temp folder).

    Returns:
        ``{case_id: fn's return value}``.

    Raises:
        WorkerDiedError: A worker ended abruptly; the message names the case(s) it was processing.
        Exception: The first exception raised by ``fn`` (other submissions are cancelled).
    """
    results: dict[str, Any] = {}
    if not items:
        return results
    num_workers = max(1, min(int(num_workers), len(items)))
    crash_case = os.environ.get(CRASH_CASE_ENV) or None
    marker_dir = tempfile.mkdtemp(prefix=".inflight-", dir=marker_root)
    max_in_flight = 2 * num_workers
    pending: dict[Future, str] = {}
    todo = iter(items)
    t0 = time.monotonic()
    step = max(1, len(items) // 10)
    executor = ProcessPoolExecutor(max_workers=num_workers, mp_context=_context([fn.__module__]),
                                   initializer=_init_worker)
    peak_kib = 0
    bar = tqdm(total=len(items), desc=desc, unit="case", disable=None)
    broken: BrokenProcessPool | None = None
    try:
        while True:
            while len(pending) < max_in_flight:
                nxt = next(todo, None)
                if nxt is None:
                    break
                case_id, args = nxt
                pending[executor.submit(_run_marked, fn, case_id, tuple(args), marker_dir, crash_case)] = case_id
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                case_id = pending.pop(fut)
                try:
                    results[case_id], rss = fut.result()
                    peak_kib = max(peak_kib, rss)
                except BrokenProcessPool as exc:
                    broken = exc
                    pending[fut] = case_id  # still unaccounted for
                    break
                except Exception:
                    log.error("%s: case %s failed", desc, case_id)
                    raise
                bar.update(1)
                if len(results) % step == 0 or len(results) == len(items):
                    log.info("%s: %d/%d cases done (%.1f s)", desc, len(results), len(items), time.monotonic() - t0)
            if broken is not None:
                break
    except BaseException:
        executor.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(marker_dir, ignore_errors=True)
        bar.close()
        raise
    # wait until the pool has terminated its surviving workers, so that only the dead worker's marker remains
    executor.shutdown(wait=True, cancel_futures=True)
    bar.close()
    try:
        if broken is not None:
            running = sorted(p.name for p in Path(marker_dir).iterdir())
            in_flight = sorted(set(pending.values()))
            if running:
                what = f"case {running[0]}" if len(running) == 1 else f"cases {', '.join(running)}"
            else:
                what = f"one of the cases in flight ({', '.join(in_flight)})"
            raise WorkerDiedError(
                f"{desc}: a worker process died abruptly while processing {what} (killed by the operating "
                f"system, most often for running out of memory); use fewer processes or more memory"
            ) from broken
    finally:
        shutil.rmtree(marker_dir, ignore_errors=True)
    log.info("%s: %d cases in %.1f s with %d process(es); peak worker memory %.0f MiB", desc, len(results),
             time.monotonic() - t0, num_workers, peak_kib / 1024)
    return results
