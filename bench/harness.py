"""Shared pieces of the benchmarks: a lean HTTP load generator, a served process, statistics.

The load generator speaks HTTP/1.1 with keep-alive over asyncio streams: a generic client
library would spend more CPU per request than the server does on a small model, and on a
2-core machine that CPU is taken from the server being measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from torchferry.serving.process import free_ports, serve_in_subprocess


@dataclass(frozen=True)
class Request:
    path: str
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def free_port() -> int:
    return free_ports(1)[0]


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _worker(
    host: str, port: int, request: Request, deadline: float, latencies: list[float]
) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    extra = "".join(f"{name}: {value}\r\n" for name, value in request.headers)
    payload = (
        f"POST {request.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {request.content_type}\r\n"
        f"{extra}Content-Length: {len(request.body)}\r\n\r\n"
    ).encode() + request.body
    errors = 0
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(payload)
            status = await _read_response(reader)
            if status == 200:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors += 1
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return errors


async def _drive(
    host: str, port: int, request: Request, concurrency: int, seconds: float
) -> LoadResult:
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    errors = await asyncio.gather(
        *(_worker(host, port, request, deadline, latencies) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - started
    return LoadResult(len(latencies), sum(errors), elapsed, latencies)


async def timed_loop(
    call: Callable[[], Awaitable[bool]], concurrency: int, seconds: float
) -> LoadResult:
    """Run ``call`` from ``concurrency`` tasks until ``seconds`` pass; ``call`` says success."""
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            begun = time.perf_counter()
            if await call():
                latencies.append((time.perf_counter() - begun) * 1000)
            else:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(len(latencies), errors, time.perf_counter() - started, latencies)


def drive(
    port: int, request: Request, concurrency: int, seconds: float, warmup: float = 1.0
) -> LoadResult:
    """Keep ``concurrency`` connections busy for ``seconds`` after a warm-up; count successes."""
    if warmup > 0:
        asyncio.run(_drive("127.0.0.1", port, request, concurrency, warmup))
    return asyncio.run(_drive("127.0.0.1", port, request, concurrency, seconds))


@contextlib.contextmanager
def served(store: Path, extra_args: list[str] | None = None) -> Iterator[int]:
    """Run ``torchferry serve`` on a free port in its own process; yield the port once ready."""
    args = ["--store", str(store), "--log-level", "warning", *(extra_args or [])]
    with serve_in_subprocess(args, timeout=120) as server:
        yield server.port


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine_line() -> str:
    cores = len(os.sched_getaffinity(0))
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {cores} cores usable, Python {sys.version.split()[0]}"
