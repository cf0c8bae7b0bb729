"""Process metrics of the worker processes, read from ``/proc`` by the process that scrapes.

``prometheus_client``'s own process collector describes the process it runs in, and in
multiprocess mode nothing aggregates it; so the supervisor reads each worker's
``/proc/PID/stat`` and ``/proc/PID/fd`` itself, at scrape time, and labels the standard
process metrics with ``worker`` (the worker's index: stable across restarts, where a pid is
not). A worker that is gone, or a system without ``/proc``, is simply left out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass(frozen=True, slots=True)
class ProcessStats:
    cpu_seconds: float
    resident_bytes: int
    virtual_bytes: int
    start_time_seconds: float
    open_fds: int | None


@cache
def _boot_time() -> float:
    with open("/proc/stat", "rb") as stat:
        for line in stat:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    return 0.0


def read_process(pid: int) -> ProcessStats | None:
    """One process's CPU time, memory, start time and open files; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    fields = stat[stat.rindex(b")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    utime, stime, start_ticks = int(fields[11]), int(fields[12]), int(fields[19])
    try:
        open_fds: int | None = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:  # another user's process
        open_fds = None
    return ProcessStats(
        cpu_seconds=(utime + stime) / ticks,
        resident_bytes=int(fields[21]) * os.sysconf("SC_PAGE_SIZE"),
        virtual_bytes=int(fields[20]),
        start_time_seconds=_boot_time() + start_ticks / ticks,
        open_fds=open_fds,
    )


class WorkerProcesses(Collector):
    """A collector of the standard ``process_*`` metrics of ``workers`` (label -> pid)."""

    def __init__(self, workers: Mapping[int, int] | Mapping[str, int]) -> None:
        self.workers: dict[int | str, int] = {key: pid for key, pid in workers.items()}

    def collect(self) -> Iterator[Metric]:
        labels = ["worker"]
        cpu = CounterMetricFamily(
            "process_cpu_seconds", "Total user and system CPU time spent in seconds.", labels=labels
        )
        resident = GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory size in bytes.", labels=labels
        )
        virtual = GaugeMetricFamily(
            "process_virtual_memory_bytes", "Virtual memory size in bytes.", labels=labels
        )
        start = GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            labels=labels,
        )
        fds = GaugeMetricFamily(
            "process_open_fds", "Number of open file descriptors.", labels=labels
        )
        for worker, pid in sorted(self.workers.items(), key=lambda item: str(item[0])):
            stats = read_process(pid)
            if stats is None:
                continue
            label = [str(worker)]
            cpu.add_metric(label, stats.cpu_seconds)
            resident.add_metric(label, stats.resident_bytes)
            virtual.add_metric(label, stats.virtual_bytes)
            start.add_metric(label, stats.start_time_seconds)
            if stats.open_fds is not None:
                fds.add_metric(label, stats.open_fds)
        yield from (cpu, resident, virtual, start, fds)
