"""Several generator processes driving one step together, so one core is not the ceiling.

The processes start once (spawned: the parent may already hold threads of an inference
engine, which ``fork`` would copy half-alive) and serve every step. A step's connections are
split among them, and all of them start, start counting and stop at the same instants.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

from torchferry.loadtest.generator import (
    GrpcRequest,
    HttpRequest,
    LoadResult,
    Window,
    grpc_load,
    http_load,
    run_loop,
)
from torchferry.loadtest.openloop import (
    DEFAULT_MAX_CONNECTIONS,
    OpenResult,
    grpc_open_load,
    http_open_load,
    schedule,
)

#: Time for every process to receive its share before the window opens.
START_MARGIN_S = 0.3


@dataclass(frozen=True)
class Endpoint:
    """Where to send: ``host``/``port`` for HTTP, ``target`` (``host:port``) for gRPC."""

    host: str
    port: int
    grpc: bool = False

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"


def _drive_share(
    endpoint: Endpoint, request: HttpRequest | GrpcRequest, concurrency: int, window: Window
) -> LoadResult:
    if isinstance(request, GrpcRequest):
        return run_loop(grpc_load(endpoint.target, request, concurrency, window))
    return run_loop(http_load(endpoint.host, endpoint.port, request, concurrency, window))


@dataclass(frozen=True)
class OpenShare:
    """One process's part of an open-loop step: its rate and its own seed."""

    rate: float
    seed: int
    arrivals: str = "poisson"
    max_connections: int = DEFAULT_MAX_CONNECTIONS


def _drive_open_share(
    endpoint: Endpoint, request: HttpRequest | GrpcRequest, share: OpenShare, window: Window
) -> OpenResult:
    offsets = schedule(share.rate, window.end - window.start, share.seed, share.arrivals)
    if isinstance(request, GrpcRequest):
        return run_loop(
            grpc_open_load(endpoint.target, request, offsets, window, share.max_connections)
        )
    return run_loop(
        http_open_load(
            endpoint.host, endpoint.port, request, offsets, window, share.max_connections
        )
    )


def _ready() -> bool:
    return True


def split(concurrency: int, processes: int) -> list[int]:
    """``concurrency`` connections over at most ``processes`` processes, as even as can be."""
    used = max(1, min(processes, concurrency))
    base, extra = divmod(concurrency, used)
    return [base + (1 if i < extra else 0) for i in range(used)]


class GeneratorPool:
    """``with GeneratorPool(4) as pool: pool.start(...).result()``."""

    def __init__(self, processes: int) -> None:
        self.processes = max(1, processes)
        context = multiprocessing.get_context("spawn")
        self._executor = ProcessPoolExecutor(self.processes, mp_context=context)
        # start every process now, not inside the first step's window
        for future in [self._executor.submit(_ready) for _ in range(self.processes * 2)]:
            future.result()

    def __enter__(self) -> GeneratorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._executor.shutdown(cancel_futures=True)

    def start(
        self,
        endpoint: Endpoint,
        request: HttpRequest | GrpcRequest,
        concurrency: int,
        warmup_s: float,
        seconds: float,
        timeout_s: float = 30.0,
    ) -> RunningStep:
        """Start a step; its window opens shortly and counts after ``warmup_s``."""
        start = time.time() + START_MARGIN_S
        window = Window(start, start + warmup_s, start + warmup_s + seconds, timeout_s)
        futures = [
            self._executor.submit(_drive_share, endpoint, request, share, window)
            for share in split(concurrency, self.processes)
        ]
        return RunningStep(window, futures)

    def start_open(
        self,
        endpoint: Endpoint,
        request: HttpRequest | GrpcRequest,
        share: OpenShare,
        warmup_s: float,
        seconds: float,
        timeout_s: float = 30.0,
    ) -> RunningOpenStep:
        """Start an open-loop step at ``share.rate`` requests/s in all: each process sends
        an independent Poisson stream at its part of the rate (their sum is Poisson at the
        whole rate), seeded from ``share.seed`` and its index."""
        start = time.time() + START_MARGIN_S
        window = Window(start, start + warmup_s, start + warmup_s + seconds, timeout_s)
        part = share.rate / self.processes
        futures = [
            self._executor.submit(
                _drive_open_share,
                endpoint,
                request,
                OpenShare(
                    part,
                    share.seed * 1000 + index,
                    share.arrivals,
                    max(1, share.max_connections // self.processes),
                ),
                window,
            )
            for index in range(self.processes)
        ]
        return RunningOpenStep(window, futures)


@dataclass
class RunningStep:
    window: Window
    futures: list[Future[LoadResult]]

    def result(self) -> LoadResult:
        total = LoadResult()
        for future in self.futures:
            total.merge(future.result())
        return total


@dataclass
class RunningOpenStep:
    window: Window
    futures: list[Future[OpenResult]]

    def result(self) -> OpenResult:
        total = OpenResult()
        for future in self.futures:
            total.merge(future.result())
        return total
