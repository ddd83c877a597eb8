"""Shared edge of the nnU-Net v1 compatibility commands: errors a user can cause become an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable


def guarded(prog: str, func: Callable[[], object]) -> int:
    """Run ``func``; an nnkube error prints one line on stderr and returns its exit code, else 0.

    Args:
        prog: Command name used as the message prefix.
        func: The work to do.
    """
    from stages.errors import NnkubeError
    from stages.log import setup_logging

    setup_logging()
    try:
        func()
    except NnkubeError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return exc.exit_code
    return 0


def workers() -> int:
    """Default worker processes: ``nnUNet_def_n_proc`` or the available CPUs, at most 8."""
    from stages.postprocess.staging import resolve_workers

    return resolve_workers(0)
