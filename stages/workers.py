"""Bounded process pools over cases that name the case whose worker died.

A worker killed by the operating system (e.g. out of memory) breaks a :class:`ProcessPoolExecutor`. In a
:class:`CasePool` every case a worker starts is recorded as a small marker file that the worker removes when it
finishes (also when the pool terminates it), so after the pool broke the remaining markers name the case that
was running in the dead worker, and :class:`WorkerDiedError` says so instead of a bare ``BrokenProcessPool`` or
a hang. :func:`map_cases` runs a function over many cases in such a pool with at most ``2 * num_workers``
submissions in flight, so memory stays bounded by the workers, not by the number of cases; the fingerprint and
preprocessing stages use it, and prediction's background preprocessing uses :class:`CasePool` directly.
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
#: Unfinished cases named in a :class:`WorkerDiedError` (the rest are counted).
MAX_NAMED = 10

_current_marker: Path | None = None


class WorkerDiedError(NnkubeError):
    """A worker process ended abruptly (killed by the OS, e.g. out of memory, or crashed in native code)."""


def pool_context(preload: Sequence[str] = ()) -> mp.context.BaseContext:
    """``forkserver`` on Linux (workers fork from a clean server with ``preload`` imported), else ``spawn``.

    Never ``fork``: a parent that runs torch (its thread pools do not survive a fork) may use these pools.
    """
    if sys.platform.startswith("linux"):
        ctx = mp.get_context("forkserver")
        if preload:
            ctx.set_forkserver_preload(list(preload))  # only takes effect when the server starts
        return ctx
    return mp.get_context("spawn")  # pragma: no cover


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


class CasePool:
    """A process pool whose workers record the case they run, so that a dead worker's case can be named.

    Use it as a context manager (or call :meth:`close`): the workers are shut down and the markers removed.

    Args:
        num_workers: Worker processes (at least 1).
        preload: Modules the ``forkserver`` imports once for all workers (e.g. the module of the function run).
        marker_root: Folder for the temporary marker folder (default: the system temp folder).
    """

    def __init__(self, num_workers: int, preload: Sequence[str] = (),
                 marker_root: str | os.PathLike | None = None) -> None:
        self.marker_dir = Path(tempfile.mkdtemp(prefix=".inflight-", dir=marker_root))
        self._crash_case = os.environ.get(CRASH_CASE_ENV) or None
        self._executor = ProcessPoolExecutor(max_workers=num_workers, mp_context=pool_context(preload),
                                             initializer=_init_worker)

    def submit(self, fn: Callable[..., Any], case_id: str, args: Sequence[Any]) -> Future:
        """Run ``fn(case_id, *args)`` in a worker (``fn`` module-level, ``case_id`` usable as a file name).

        Returns:
            A future of ``(fn's result, the worker's peak resident memory in KiB)``; it raises
            ``BrokenProcessPool`` when a worker died (turn that into :meth:`died`).
        """
        return self._executor.submit(_run_marked, fn, case_id, tuple(args), str(self.marker_dir), self._crash_case)

    def shutdown(self) -> None:
        """Wait until the workers have ended; submissions not yet started are dropped.

        After a worker died, the pool terminates the survivors, which remove their markers; once this returns
        only the dead worker's marker is left.
        """
        self._executor.shutdown(wait=True, cancel_futures=True)

    def died(self, desc: str, in_flight: Sequence[str], unfinished: Sequence[str], hint: str) -> WorkerDiedError:
        """The error to raise after the pool broke; call :meth:`shutdown` first.

        Args:
            desc: What the pool was doing (starts the message).
            in_flight: Cases submitted and not finished (named when no marker is left).
            unfinished: Every case without a result.
            hint: What to do about it, e.g. "use fewer processes or more memory".
        """
        running = sorted(p.name for p in self.marker_dir.iterdir())
        if running:
            what = f"case {running[0]}" if len(running) == 1 else f"cases {', '.join(running)}"
        else:
            what = f"one of the cases in flight ({', '.join(sorted(set(in_flight)))})"
        named = ", ".join(unfinished[:MAX_NAMED]) + (" ..." if len(unfinished) > MAX_NAMED else "")
        return WorkerDiedError(
            f"{desc}: a worker process died abruptly while processing {what} (killed by the operating system, most "
            f"often for running out of memory); {len(unfinished)} case(s) unfinished ({named}); {hint}"
        )

    def close(self) -> None:
        """Shut the workers down and remove the markers."""
        self.shutdown()
        shutil.rmtree(self.marker_dir, ignore_errors=True)

    def __enter__(self) -> CasePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def map_cases(
    fn: Callable[..., Any],
    items: Sequence[tuple[str, tuple]],
    num_workers: int,
    desc: str = "cases",
    marker_root: str | os.PathLike | None = None,
    hint: str = "use fewer processes or more memory",
) -> dict[str, Any]:
    """Run ``fn(case_id, *args)`` for every ``(case_id, args)`` in a bounded :class:`CasePool`.

    Args:
        fn: A module-level (picklable) function.
        items: ``(case_id, args)`` pairs; case ids must be usable as file names.
        num_workers: Maximum number of worker processes (at least 1).
        desc: Label of the progress bar, log lines and errors.
        marker_root: Folder for the temporary marker files (default: the system temp folder).
        hint: Advice in the :class:`WorkerDiedError` message.

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
    max_in_flight = 2 * num_workers
    pending: dict[Future, str] = {}
    todo = iter(items)
    t0 = time.monotonic()
    step = max(1, len(items) // 10)
    peak_kib = 0
    broken: BrokenProcessPool | None = None
    with CasePool(num_workers, [fn.__module__], marker_root) as pool, \
            tqdm(total=len(items), desc=desc, unit="case", disable=None) as bar:
        while broken is None:
            while len(pending) < max_in_flight:
                nxt = next(todo, None)
                if nxt is None:
                    break
                case_id, args = nxt
                pending[pool.submit(fn, case_id, args)] = case_id
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
            pool.shutdown()  # let the pool terminate its surviving workers: only the dead worker's marker remains
            unfinished = [case_id for case_id, _ in items if case_id not in results]
            raise pool.died(desc, list(pending.values()), unfinished, hint) from broken
    log.info("%s: %d cases in %.1f s with %d process(es); peak worker memory %.0f MiB", desc, len(results),
             time.monotonic() - t0, num_workers, peak_kib / 1024)
    return results
