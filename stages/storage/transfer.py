"""A thread pool that runs many transfers (files of a tree, parts of an upload), with an optional tqdm bar."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

from stages.errors import BadInputError

T = TypeVar("T")


def show_progress(progress: bool | None) -> bool:
    """Resolve the ``progress`` argument: None means "when stderr is a terminal"."""
    if progress is None:
        return sys.stderr.isatty()
    return bool(progress)


def run_parallel(tasks: Sequence[Callable[[], T]], workers: int, progress: bool | None, desc: str = "") -> list[T]:
    """Run ``tasks`` on ``workers`` threads; stop at the first failure and raise it.

    Args:
        tasks: Zero-argument callables (one transfer each).
        workers: Threads to use (at least 1).
        progress: Show a progress bar (True), never (False) or when stderr is a TTY (None).
        desc: Label of the progress bar.

    Returns:
        The tasks' results, in the order of ``tasks``.

    Raises:
        BadInputError: ``workers`` is below 1.
        Exception: The first exception a task raised; tasks not yet started are cancelled.
    """
    if workers < 1:
        raise BadInputError(f"workers must be at least 1, got {workers}")
    if not tasks:
        return []
    from tqdm.auto import tqdm

    with tqdm(total=len(tasks), desc=desc, unit="file", disable=not show_progress(progress)) as bar:
        with ThreadPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
            futures = [pool.submit(task) for task in tasks]
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                bar.update(len(done))
                failed = next((f for f in done if f.exception() is not None), None)
                if failed is not None:
                    for future in pending:
                        future.cancel()
                    raise failed.exception()
    return [future.result() for future in futures]
