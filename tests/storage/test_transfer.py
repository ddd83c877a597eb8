"""The parallel runner behind upload_tree/download_tree: first failure wins, progress bar on demand."""

from __future__ import annotations

import threading
import time

import pytest

from stages.storage import transfer


def test_all_tasks_run_on_several_threads():
    seen: set[int] = set()
    threads: set[str] = set()
    lock = threading.Lock()
    barrier = threading.Barrier(3)

    def task(i: int):
        barrier.wait(timeout=5)  # only passes if three tasks run at the same time
        with lock:
            seen.add(i)
            threads.add(threading.current_thread().name)

    transfer.run_parallel([lambda i=i: task(i) for i in range(9)], workers=3, progress=False, desc="t")
    assert seen == set(range(9))
    assert len(threads) == 3


def test_first_failure_is_raised_and_later_tasks_are_cancelled():
    ran: list[int] = []

    def task(i: int):
        ran.append(i)
        time.sleep(0.02)
        if i == 1:
            raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        transfer.run_parallel([lambda i=i: task(i) for i in range(50)], workers=1, progress=False, desc="t")
    assert len(ran) < 50


def test_progress_defaults_to_a_terminal_check(monkeypatch):
    class FakeErr:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.setattr("sys.stderr", FakeErr(True))
    assert transfer.show_progress(None) is True
    monkeypatch.setattr("sys.stderr", FakeErr(False))
    assert transfer.show_progress(None) is False
    assert transfer.show_progress(True) is True


def test_progress_bar_is_drawn_on_stderr_when_asked(capsys):
    transfer.run_parallel([lambda: None] * 4, workers=2, progress=True, desc="upload demo")
    err = capsys.readouterr().err
    assert "upload demo" in err and "4/4" in err
