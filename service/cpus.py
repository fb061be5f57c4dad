"""How many cores this process may use: its affinity mask, lowered to a container's CPU limit
(cgroup v2 or v1), for the default thread counts (docs/benchmarks.md, "Defaults")."""

from __future__ import annotations

import math
import os
from pathlib import Path

# A container's CPU limit: cgroup v2 "<quota> <period>" (or "max ..."); cgroup v1's two files.
CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


def cpu_count() -> int:
    """Cores this process may use: the affinity mask (not the host's total), lowered to a
    container's CPU limit (rounded up) as Kubernetes and `docker --cpus` set it: threads sized
    to the node's cores would contend for a fraction of them."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = max(1, os.cpu_count() or 1)
    limit = cgroup_cpu_limit(CGROUP_V2_CPU_MAX, CGROUP_V1_CPU)
    return min(cores, limit) if limit else cores


def cgroup_cpu_limit(v2_cpu_max: Path, v1_cpu: Path) -> int | None:
    """The CPU limit as whole cores, rounded up; None when unlimited, absent or unreadable."""
    try:
        quota, period = v2_cpu_max.read_text(encoding="ascii").split()[:2]
    except (OSError, ValueError):
        try:
            quota = (v1_cpu / "cpu.cfs_quota_us").read_text(encoding="ascii").strip()
            period = (v1_cpu / "cpu.cfs_period_us").read_text(encoding="ascii").strip()
        except OSError:
            return None
    try:
        cores = int(quota) / int(period)  # "max" (v2) or -1 (v1): unlimited
    except (ValueError, ZeroDivisionError):
        return None
    return max(1, math.ceil(cores)) if cores > 0 else None
