"""The open-loop generator: requests start on a schedule (Poisson arrivals at a fixed rate),
whether or not earlier ones have answered.

A closed loop waits for an answer before it sends again, so a slow server slows its own
load down and never meets a backlog; real clients do not wait for each other. Here every
request has a scheduled start, and its latency is measured from that instant: when the
generator itself runs late (its lag, reported on its own), the delay counts against the
server, which errs on the side of a worse figure, never a better one.

HTTP requests go over keep-alive connections taken from a pool that opens a new one when
every open one is busy, up to a cap; a request that finds the pool at its cap is counted
as a client-side miss (``no-connection``), never delayed silently. gRPC calls share one
channel (HTTP/2 multiplexes them), with the same cap on calls in flight.

Like ``generator``, this module imports neither numpy nor torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from torchferry.loadtest.generator import (
    CONNECTION_ERROR,
    TIMEOUT,
    GrpcRequest,
    HttpRequest,
    Window,
    _http_exchange,
    grpc_error_kind,
)

#: A request that found every connection busy and the pool at its cap.
NO_CONNECTION = "no-connection"
ARRIVALS = ("poisson", "uniform")
DEFAULT_MAX_CONNECTIONS = 512


def schedule(rate: float, seconds: float, seed: int, arrivals: str = "poisson") -> list[float]:
    """Start offsets (seconds from 0) of the requests in ``seconds`` at ``rate`` per second:
    exponential gaps (a Poisson process) from a seeded generator, or even gaps."""
    if rate <= 0:
        return []
    if arrivals not in ARRIVALS:
        raise ValueError(f"arrivals {arrivals!r}: expected one of {ARRIVALS}")
    if arrivals == "uniform":
        return [n / rate for n in range(1, math.ceil(seconds * rate)) if n / rate < seconds]
    draw = random.Random(seed)
    offsets: list[float] = []
    instant = draw.expovariate(rate)
    while instant < seconds:
        offsets.append(instant)
        instant += draw.expovariate(rate)
    return offsets


@dataclass
class OpenResult:
    """What one open loop (or several, merged) measured for the requests scheduled inside
    the measuring window."""

    scheduled: int = 0
    ok: int = 0
    seconds: float = 0.0
    #: Successful requests, from their scheduled start to their answer.
    latencies_ms: list[float] = field(default_factory=list)
    #: How late the generator sent each request (scheduled start to the write).
    lag_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    #: The most connections (HTTP) or calls (gRPC) open at once.
    peak_connections: int = 0

    def merge(self, other: OpenResult) -> None:
        self.scheduled += other.scheduled
        self.ok += other.ok
        self.seconds = max(self.seconds, other.seconds)
        self.latencies_ms.extend(other.latencies_ms)
        self.lag_ms.extend(other.lag_ms)
        self.errors.update(other.errors)
        self.peak_connections += other.peak_connections


class _Clock:
    """Scheduled starts as ``perf_counter`` instants, and the record of what happened."""

    def __init__(self, window: Window) -> None:
        self.window = window
        # perf_counter is steady; the window is wall time, shared across processes
        self.origin = time.perf_counter() + (window.start - time.time())
        self.counted_from = window.measure_from - window.start
        self.result = OpenResult(seconds=window.end - window.measure_from)
        self.in_flight = 0

    def counts(self, offset: float) -> bool:
        return offset >= self.counted_from

    def done(self, offset: float, sent: float | None, error: str | None) -> None:
        if not self.counts(offset):
            return  # warm-up
        scheduled = self.origin + offset
        result = self.result
        result.scheduled += 1
        if sent is not None:
            result.lag_ms.append(max(0.0, sent - scheduled) * 1000)
        if error is None:
            result.ok += 1
            result.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
        else:
            result.errors[error] += 1

    def busy(self, change: int) -> None:
        self.in_flight += change
        self.result.peak_connections = max(self.result.peak_connections, self.in_flight)


async def _drive(
    clock: _Clock, offsets: list[float], send: Callable[[float], Awaitable[None]]
) -> None:
    """Start ``send(offset)`` at each scheduled offset (every one that is due at once), then
    wait for all of them to finish."""
    tasks: set[asyncio.Task[None]] = set()
    index = 0
    while index < len(offsets):
        wait = clock.origin + offsets[index] - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        now = time.perf_counter()
        while index < len(offsets) and clock.origin + offsets[index] <= now:
            task = asyncio.ensure_future(send(offsets[index]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
    if tasks:
        await asyncio.gather(*tasks)


_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
#: An idle connection older than this is closed rather than reused: at a low rate a
#: connection can sit idle until the server's keep-alive timeout (uvicorn's default is 5 s)
#: closes it, and a request written into it would fail for the generator's sake.
IDLE_REUSE_S = 2.0


class _HttpPool:
    """Idle keep-alive connections; opens one when none is idle, up to ``cap`` open."""

    def __init__(self, host: str, port: int, cap: int) -> None:
        self.host, self.port, self.cap = host, port, cap
        self.idle: list[tuple[float, _Connection]] = []  # (idle since, connection)
        self.open = 0

    def full(self) -> bool:
        return not self.idle and self.open >= self.cap

    async def take(self) -> _Connection:
        now = time.perf_counter()
        while self.idle:
            since, connection = self.idle.pop()
            reader, writer = connection
            if now - since < IDLE_REUSE_S and not reader.at_eof() and not writer.is_closing():
                return connection
            self.drop(connection)  # the server may have closed it, or soon will
        self.open += 1
        try:
            return await asyncio.open_connection(self.host, self.port)
        except BaseException:
            self.open -= 1
            raise

    def give_back(self, connection: _Connection) -> None:
        self.idle.append((time.perf_counter(), connection))

    def drop(self, connection: _Connection) -> None:
        self.open -= 1
        connection[1].close()

    async def close(self) -> None:
        for _, (_, writer) in self.idle:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        self.idle.clear()


async def http_open_load(
    host: str,
    port: int,
    request: HttpRequest,
    offsets: list[float],
    window: Window,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> OpenResult:
    """Send ``request`` at each of ``offsets`` (seconds after ``window.start``)."""
    payload = request.encode(host)
    clock = _Clock(window)
    pool = _HttpPool(host, port, max_connections)

    async def send(offset: float) -> None:
        if pool.full():
            clock.done(offset, None, NO_CONNECTION)
            return
        clock.busy(1)
        connection: _Connection | None = None
        sent: float | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(window.timeout_s):
                connection = await pool.take()
                sent = time.perf_counter()
                status = await _http_exchange(*connection, payload)
            if status != 200:
                error = str(status)
        except TimeoutError:
            error = TIMEOUT
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            error = CONNECTION_ERROR
        finally:
            clock.busy(-1)
        clock.done(offset, sent, error)
        if connection is not None:
            if error in (TIMEOUT, CONNECTION_ERROR):
                pool.drop(connection)  # it may hold half an answer
            else:
                pool.give_back(connection)

    try:
        await _drive(clock, offsets, send)
    finally:
        await pool.close()
    return clock.result


async def grpc_open_load(
    target: str,
    request: GrpcRequest,
    offsets: list[float],
    window: Window,
    max_calls: int = DEFAULT_MAX_CONNECTIONS,
) -> OpenResult:
    """Call ``request`` at each of ``offsets`` on one channel, at most ``max_calls`` in
    flight (a call beyond that is a ``no-connection`` miss)."""
    from grpc import aio

    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    clock = _Clock(window)
    async with aio.insecure_channel(target, options=options) as channel:
        call: Callable[..., Awaitable[bytes]] = channel.unary_unary(request.method)
        metadata = request.metadata or None
        await channel.channel_ready()

        async def send(offset: float) -> None:
            if clock.in_flight >= max_calls:
                clock.done(offset, None, NO_CONNECTION)
                return
            clock.busy(1)
            error: str | None = None
            sent = time.perf_counter()
            try:
                await call(request.message, timeout=window.timeout_s, metadata=metadata)
            except aio.AioRpcError as exc:
                error = grpc_error_kind(exc)
            finally:
                clock.busy(-1)
            clock.done(offset, sent, error)

        await _drive(clock, offsets, send)
    return clock.result
