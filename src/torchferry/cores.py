"""How many cores this process may use: what intra-op threads default to, and what
``--workers`` divides among its workers."""

from __future__ import annotations

import os


def default_threads() -> int:
    """The cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
