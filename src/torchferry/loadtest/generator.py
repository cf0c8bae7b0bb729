"""The load generator: closed-loop HTTP/1.1 (keep-alive, raw asyncio streams) and gRPC loops.

A generic client library spends more CPU per request than a server spends on a small model,
and on a small machine that CPU is taken from the server being measured. So each request is
encoded once, to bytes, before the loop; the loop writes those bytes and reads just enough of
the answer (status line, length, body) to be ready for the next one. gRPC goes through
``grpc.aio`` with no serializer: the pre-serialized request bytes go out as they are and the
answer is not decoded.

This module imports neither numpy nor torch: it is what each generator process loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

CONNECTION_ERROR = "connection"
TIMEOUT = "timeout"
_Result = TypeVar("_Result")


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP request, sent as is on every iteration."""

    path: str
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, host: str) -> bytes:
        extra = "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {self.content_type}\r\n"
            f"{extra}Content-Length: {len(self.body)}\r\n\r\n"
        )
        return head.encode("latin-1") + self.body


@dataclass(frozen=True)
class GrpcRequest:
    """One unary gRPC call with a pre-serialized request message."""

    method: str  # "/inference.GRPCInferenceService/ModelInfer"
    message: bytes
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass
class LoadResult:
    """What one loop (or several, merged) measured inside the measuring window."""

    ok: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    #: Failures by kind: an HTTP status ("503"), a gRPC code ("UNAVAILABLE"),
    #: ``connection`` (refused, reset, closed mid-answer) or ``timeout``.
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def merge(self, other: LoadResult) -> None:
        self.ok += other.ok
        self.seconds = max(self.seconds, other.seconds)
        self.latencies_ms.extend(other.latencies_ms)
        self.errors.update(other.errors)


@dataclass(frozen=True)
class Window:
    """When a loop starts (warm-up), starts counting, and stops: ``time.time()`` instants,
    shared by every generator process so that their windows coincide."""

    start: float
    measure_from: float
    end: float
    timeout_s: float = 30.0


class _Recorder:
    def __init__(self, window: Window) -> None:
        self.window = window
        self.result = LoadResult()
        self.last = window.measure_from

    def done(self, began_wall: float, elapsed: float, error: str | None) -> None:
        if began_wall < self.window.measure_from:
            return  # warm-up
        finished = began_wall + elapsed
        self.last = max(self.last, finished)
        if error is None:
            self.result.ok += 1
            self.result.latencies_ms.append(elapsed * 1000)
        else:
            self.result.errors[error] += 1

    def finish(self) -> LoadResult:
        self.result.seconds = max(self.last, self.window.end) - self.window.measure_from
        return self.result


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> None:
    length, chunked = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        await reader.readexactly(length)
        return
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


async def _http_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> int:
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    await _read_body(reader, head)
    return int(head[9:12])


async def _http_connection(
    host: str, port: int, payload: bytes, recorder: _Recorder, deadline: float
) -> None:
    """One connection's closed loop; a broken connection is counted and opened again."""
    window = recorder.window
    while time.time() < deadline:
        try:
            async with asyncio.timeout(window.timeout_s):
                reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            recorder.done(time.time(), 0.0, CONNECTION_ERROR)
            await asyncio.sleep(0.05)
            continue
        try:
            while (began_wall := time.time()) < deadline:
                began = time.perf_counter()
                error: str | None = None
                try:
                    async with asyncio.timeout(window.timeout_s):
                        status = await _http_exchange(reader, writer, payload)
                    if status != 200:
                        error = str(status)
                except TimeoutError:
                    error = TIMEOUT
                except (
                    OSError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    ValueError,
                ):
                    error = CONNECTION_ERROR
                recorder.done(began_wall, time.perf_counter() - began, error)
                if error in (TIMEOUT, CONNECTION_ERROR):
                    break  # the stream may hold half an answer: start on a fresh connection
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _wait_until(instant: float) -> None:
    await asyncio.sleep(max(0.0, instant - time.time()))


async def http_load(
    host: str, port: int, request: HttpRequest, concurrency: int, window: Window
) -> LoadResult:
    """Keep ``concurrency`` connections busy with ``request`` through ``window``."""
    payload = request.encode(host)
    recorder = _Recorder(window)
    await _wait_until(window.start)
    await asyncio.gather(
        *(_http_connection(host, port, payload, recorder, window.end) for _ in range(concurrency))
    )
    return recorder.finish()


def grpc_error_kind(exc: Any) -> str:
    """A failed call's kind: ``timeout``, ``connection`` (UNAVAILABLE) or the code's name."""
    import grpc

    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TIMEOUT
    if code == grpc.StatusCode.UNAVAILABLE:
        return CONNECTION_ERROR
    return str(code.name)


async def grpc_load(
    target: str, request: GrpcRequest, concurrency: int, window: Window
) -> LoadResult:
    """Keep ``concurrency`` unary calls of ``request`` in flight on one channel through
    ``window``."""
    from grpc import aio

    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    recorder = _Recorder(window)
    async with aio.insecure_channel(target, options=options) as channel:
        call: Callable[..., Awaitable[bytes]] = channel.unary_unary(request.method)
        metadata = request.metadata or None
        await _wait_until(window.start)

        async def loop() -> None:
            while (began_wall := time.time()) < window.end:
                began = time.perf_counter()
                error: str | None = None
                try:
                    await call(request.message, timeout=window.timeout_s, metadata=metadata)
                except aio.AioRpcError as exc:
                    error = grpc_error_kind(exc)
                recorder.done(began_wall, time.perf_counter() - began, error)
                if error == CONNECTION_ERROR:
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return recorder.finish()


def run_loop(coroutine: Coroutine[Any, Any, _Result]) -> _Result:
    """Run one loop on uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


async def timed_loop(
    call: Callable[[], Awaitable[bool]], concurrency: int, seconds: float
) -> LoadResult:
    """Run ``call`` from ``concurrency`` tasks for ``seconds``; ``call`` says success. For
    clients that are not raw bytes (a library under test); failures count as ``failed``."""
    now = time.time()
    recorder = _Recorder(Window(now, now, now + seconds))

    async def worker() -> None:
        while (began_wall := time.time()) < recorder.window.end:
            began = time.perf_counter()
            success = await call()
            recorder.done(began_wall, time.perf_counter() - began, None if success else "failed")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return recorder.finish()
