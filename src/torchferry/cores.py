"""How many cores this process may use: what intra-op threads default to, and what
``--workers`` divides among its workers."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

#: cgroup v2's CPU bandwidth limit of this process's group (what ``docker --cpus`` and a
#: Kubernetes CPU limit set): "QUOTA PERIOD", or "max PERIOD" for none.
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def default_threads() -> int:
    """The cores this process may use: its CPU affinity, narrowed by a cgroup CPU limit.

    A container limited to 2 CPUs on a 64-core node still sees 64 cores in its affinity;
    64 threads sharing 2 CPUs of time would be throttled, so the limit (rounded up) wins."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    limit = cpu_limit(CPU_MAX)
    return max(1, min(cores, limit)) if limit is not None else cores


def cpu_limit(cpu_max: Path) -> int | None:
    """Whole CPUs a cgroup v2 ``cpu.max`` file allows (rounded up), None without a limit."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return math.ceil(int(quota) / int(period)) if quota != "max" else None
    except (OSError, ValueError, ZeroDivisionError):
        return None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
