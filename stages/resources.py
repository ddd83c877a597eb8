"""What this process may use: CPUs from affinity and the cgroup quota, not the node's ``cpu_count``."""

from __future__ import annotations

import math
import os
from pathlib import Path


def _cgroup_cpu_limit() -> float | None:
    """CPU quota of the process's cgroup (v2 ``cpu.max`` or v1 ``cfs_quota/period``), or None if unlimited."""
    v2 = Path("/sys/fs/cgroup/cpu.max")
    try:
        if v2.exists():
            quota, period = v2.read_text().split()[:2]
            if quota != "max":
                return int(quota) / int(period)
            return None
        q = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        p = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        if q.exists() and p.exists():
            quota_us = int(q.read_text())
            if quota_us > 0:
                return quota_us / int(p.read_text())
    except (OSError, ValueError):
        return None
    return None


def available_cpus() -> int:
    """Number of CPUs this process may really use (affinity mask, then cgroup quota), at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.floor(limit)))
    return max(1, n)


def default_workers(env_var: str | None = None, cap: int | None = None) -> int:
    """Worker count: ``env_var`` if set (e.g. ``nnUNet_n_proc_DA``), else the available CPUs, capped."""
    if env_var and os.environ.get(env_var, "").strip():
        return max(0, int(os.environ[env_var]))
    n = available_cpus()
    return min(n, cap) if cap else n
