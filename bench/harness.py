"""Shared pieces of the benchmarks: a served process, statistics, and the load generators.

The closed-loop HTTP generator is ``torchferry bench``'s (``torchferry.loadtest.generator``:
HTTP/1.1 with keep-alive over asyncio streams, pre-encoded requests), so there is one; this
module adapts it to the benchmarks' ``LoadResult``. The open-loop ``paced_loop`` and wrk are
the benchmarks' own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from torchferry.loadtest import generator
from torchferry.loadtest.generator import HttpRequest
from torchferry.serving.process import ServerProcess, free_ports, serve_in_subprocess

#: One pre-encoded HTTP request (path, body, content type, headers): the load tester's own.
Request = HttpRequest


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


def _from_generator(result: generator.LoadResult) -> LoadResult:
    return LoadResult(result.ok, sum(result.errors.values()), result.seconds, result.latencies_ms)


async def _drive(
    host: str, port: int, request: Request, concurrency: int, seconds: float
) -> LoadResult:
    """``torchferry bench``'s HTTP generator (keep-alive, pre-encoded) for ``seconds``."""
    now = time.time()
    window = generator.Window(now, now, now + seconds)
    return _from_generator(await generator.http_load(host, port, request, concurrency, window))


async def timed_loop(
    call: Callable[[], Awaitable[bool]], concurrency: int, seconds: float
) -> LoadResult:
    """Run ``call`` from ``concurrency`` tasks until ``seconds`` pass; ``call`` says success."""
    return _from_generator(await generator.timed_loop(call, concurrency, seconds))


@dataclass(frozen=True)
class PacedResult(LoadResult):
    #: Slots skipped because ``max_in_flight`` calls were already waiting (the server, or
    #: this client, could not keep up with the rate).
    missed: int = 0
    rate: float = 0.0
    #: How late each call started after its slot (ms): this client's own lag
    #: (a busy or starved event loop), as opposed to the time its calls took.
    start_lag_ms: list[float] = field(default_factory=list)


async def paced_loop(
    call: Callable[[], Awaitable[bool]], rate: float, seconds: float, max_in_flight: int = 256
) -> PacedResult:
    """Start ``call`` at ``rate`` per second on a fixed schedule for ``seconds`` (an open
    loop: a slow answer does not delay the next start), then wait for the calls in flight.
    A slot that finds ``max_in_flight`` calls in flight is skipped and counted as missed."""
    latencies: list[float] = []
    errors = missed = started_calls = 0
    interval = 1.0 / rate
    running: set[asyncio.Task[None]] = set()
    lags: list[float] = []

    async def one(slot: float) -> None:
        nonlocal errors
        begun = time.perf_counter()
        lags.append((begun - slot) * 1000)
        if await call():
            latencies.append((time.perf_counter() - begun) * 1000)
        else:
            errors += 1

    started = time.perf_counter()
    deadline = started + seconds
    while (now := time.perf_counter()) < deadline:
        due = int((now - started) / interval) + 1  # slots whose time has come
        while started_calls < due:
            started_calls += 1
            if len(running) >= max_in_flight:
                missed += 1
                continue
            task = asyncio.create_task(one(started + (started_calls - 1) * interval))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.sleep(max(0.0, started + started_calls * interval - time.perf_counter()))
    if running:
        await asyncio.gather(*running)
    elapsed = time.perf_counter() - started
    return PacedResult(len(latencies), errors, elapsed, latencies, missed, rate, lags)


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
    with served_process(store, extra_args) as server:
        yield server.port


@contextlib.contextmanager
def served_process(
    store: Path,
    extra_args: list[str] | None = None,
    log: Path | None = None,
    log_level: str = "warning",
) -> Iterator[ServerProcess]:
    """``served``, yielding the whole :class:`ServerProcess` (pids, ports, its log when
    ``log`` is given; ``log_level="info"`` writes the worker lines that ``serving_pids``
    reads)."""
    args = ["--store", str(store), "--log-level", log_level, *(extra_args or [])]
    with serve_in_subprocess(args, log=log, timeout=120) as server:
        if log is not None and log_level.lower() in ("info", "debug"):
            wait_announced(server)
        yield server


def wait_announced(server: ServerProcess, timeout: float = 120.0) -> None:
    """Wait for the supervisor's ``serving on ... with N worker(s)`` line: every worker
    serves (the server answers ready as soon as the first one does)."""
    deadline = time.monotonic() + timeout
    while _THREADS.search(server.output()) is None:
        if not server.alive():
            raise RuntimeError(f"the server exited:\n{server.output()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not every worker serves after {timeout} s:\n{server.output()}")
        time.sleep(0.1)


_SERVING = re.compile(r"worker (\d+) serving \(pid (\d+)\)")
_THREADS = re.compile(r"with (\d+) worker\(s\), (\d+) thread\(s\) each")


def serving_pids(log_text: str) -> dict[int, int]:
    """Each worker's current pid (worker index -> pid), from ``worker N serving (pid P)``
    lines in an info-level server log; a restarted worker's later line wins. The
    supervisor's other child, the warm spare, serves nothing and is not listed."""
    return {int(m[1]): int(m[2]) for m in _SERVING.finditer(log_text)}


def server_threads(log_text: str) -> int | None:
    """The intra-op threads per worker that the server announced (info-level log)."""
    match = _THREADS.search(log_text)
    return int(match[2]) if match else None


def rss_mb(pid: int) -> float:
    """A process's resident set (VmRSS) in MiB; NaN once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# -- wrk: the HTTP load generator for the figures that need the server's whole CPU ----------

WRK_ERRORS = ("connect", "read", "write", "status", "timeout")

_WRK_SCRIPT = r"""
local body_file = assert(io.open(%(body_path)s, "rb"))
wrk.method = "POST"
wrk.body = body_file:read("*a")
body_file:close()
%(headers)s
local rate = %(rate)s  -- requests/s for this thread; 0: as fast as the connections go
local window_from, window_to = %(window_from)s, %(window_to)s  -- ms after init; 0, 0: none

local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_nsec; } tf_timespec;
  int clock_gettime(int clock, tf_timespec *now);
]]
local now_ts = ffi.new("tf_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, now_ts)  -- CLOCK_MONOTONIC
  return tonumber(now_ts.tv_sec) * 1000 + tonumber(now_ts.tv_nsec) / 1e6
end

if rate > 0 then
  local interval, slot = 1000 / rate, nil
  -- Each request (of any connection of this thread) claims the next slot of a fixed
  -- schedule and waits for it: a steady rate while enough connections are free. A stall
  -- is made up for at most a second later (then the schedule restarts from now).
  function delay()
    local now = now_ms()
    if slot == nil or slot < now - 1000 then slot = now end
    local wait = slot - now
    slot = slot + interval
    return wait > 0 and wait or 0
  end
end

if window_to > 0 then
  -- count the answers that complete inside [window_from, window_to) after this thread
  -- started (its connections stay open: no ramp-up inside the window, and what is in
  -- flight at its end balances what was in flight at its start)
  local started
  window_ok, window_all = 0, 0
  function init(args)
    started = now_ms()
  end
  function response(status, headers, body)
    local since = now_ms() - started
    if since >= window_from and since < window_to then
      window_all = window_all + 1
      if status < 400 then window_ok = window_ok + 1 end
    end
  end
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local e = summary.errors
  local ok, all = 0, 0
  for _, thread in ipairs(threads) do
    ok = ok + (thread:get("window_ok") or 0)
    all = all + (thread:get("window_all") or 0)
  end
  io.write(string.format(
    '\nWRK_JSON {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d, "p50_us": %%.1f, "p90_us": %%.1f, ' ..
    '"p99_us": %%.1f, "max_us": %%.1f, "mean_us": %%.1f, "window_ok": %%d, ' ..
    '"window_all": %%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, ok, all))
end
"""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run. Latencies are wrk's, which corrects for coordinated omission: after the
    run it adds synthetic samples for answers slower than the mean interval between a
    connection's requests, so its percentiles and mean are above the raw ones (its mean
    times its request count can exceed the run's length)."""

    #: Completed responses, whatever their status (wrk counts >399 as ``status`` errors).
    requests: int
    errors: dict[str, int]
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    connections: int = 0
    #: With a window (``Wrk.skip``): the answers completed inside it, and its length.
    window_ok: int = 0
    window_requests: int = 0
    window_s: float = 0.0

    @property
    def ok(self) -> int:
        return self.requests - self.errors.get("status", 0)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def throughput(self) -> float:
        """Successful responses per second: inside the window when the run had one, else
        over the whole run (wrk's Requests/sec, less the failed ones)."""
        if self.window_s:
            return self.window_ok / self.window_s
        return self.ok / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "seconds": self.seconds,
            "throughput": self.throughput,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "mean_ms": self.mean_ms,
            "connections": self.connections,
            "window_ok": self.window_ok,
            "window_requests": self.window_requests,
            "window_s": self.window_s,
        }


def wrk_threads(connections: int) -> int:
    """One wrk thread up to 8 connections, two beyond (threads never exceed connections)."""
    return 1 if connections <= 8 else 2


@dataclass
class Wrk:
    """One ``wrk`` run in the background: ``start()``, then ``result()`` waits for it.

    ``rate`` (requests/s over all threads) paces the requests with wrk's Lua ``delay()``
    hook on a fixed schedule (stock wrk has no rate option); None runs flat out.

    ``skip`` > 0 measures inside one run: wrk runs ``skip + seconds`` (and a second more),
    and the throughput counts only the answers completed in the ``seconds`` after the first
    ``skip`` (a Lua ``response()`` hook, so wrk then reads every answer's headers and body).
    For a slow batched model this matters: a run that starts from idle connections loses
    about one latency of answers at its start, and what is in flight at its end is lost;
    in a window inside the run, both balance. Latencies still cover the whole run.
    """

    port: int
    request: Request
    connections: int
    seconds: float
    rate: float | None = None
    threads: int | None = None
    timeout_s: float = 10.0
    skip: float = 0.0
    process: subprocess.Popen[str] | None = None
    _dir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def duration(self) -> int:
        """wrk's -d (whole seconds)."""
        if self.skip > 0:
            return math.ceil(self.skip + self.seconds) + 1
        return max(1, round(self.seconds))

    def command(self) -> list[str]:
        assert self._dir is not None
        threads = self.threads or wrk_threads(self.connections)
        folder = Path(self._dir.name)
        body_path = folder / "body.bin"
        body_path.write_bytes(self.request.body)
        headers = [("Content-Type", self.request.content_type), *self.request.headers]
        lua_headers = "\n".join(
            f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}" for name, value in headers
        )
        window = (self.skip * 1000, (self.skip + self.seconds) * 1000) if self.skip > 0 else (0, 0)
        script = folder / "load.lua"
        script.write_text(
            _WRK_SCRIPT
            % {
                "body_path": json.dumps(str(body_path)),
                "headers": lua_headers,
                "rate": repr(self.rate / threads if self.rate else 0),
                "window_from": repr(float(window[0])),
                "window_to": repr(float(window[1])),
            }
        )
        wrk = shutil.which("wrk")
        if wrk is None:
            raise RuntimeError("wrk is not installed (apt-get install wrk)")
        return [
            wrk,
            f"-t{threads}",
            f"-c{self.connections}",
            f"-d{self.duration}s",
            f"--timeout={max(1, math.ceil(self.timeout_s))}s",
            "-s",
            str(script),
            f"http://127.0.0.1:{self.port}{self.request.path}",
        ]

    def start(self) -> Wrk:
        self._dir = tempfile.TemporaryDirectory(prefix="tf-wrk-")
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        return self

    def result(self) -> WrkResult:
        assert self.process is not None and self._dir is not None
        try:
            out, err = self.process.communicate(timeout=self.duration + self.timeout_s + 30)
        finally:
            self._dir.cleanup()
        window = self.seconds if self.skip > 0 else 0.0
        return parse_wrk(out, err, self.process.returncode, self.connections, window)


def parse_wrk(
    out: str, err: str, returncode: int | None, connections: int = 0, window_s: float = 0.0
) -> WrkResult:
    line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk exited with {returncode} and no summary:\n{out}\n{err}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    none = data["requests"] == 0

    def ms(key: str) -> float:
        return float("nan") if none else data[key] / 1000

    return WrkResult(
        requests=data["requests"],
        errors={key: data[key] for key in WRK_ERRORS},
        seconds=data["duration_us"] / 1e6,
        p50_ms=ms("p50_us"),
        p90_ms=ms("p90_us"),
        p99_ms=ms("p99_us"),
        max_ms=ms("max_us"),
        mean_ms=ms("mean_us"),
        connections=connections,
        window_ok=data["window_ok"],
        window_requests=data["window_all"],
        window_s=window_s,
    )


def wrk(
    port: int,
    request: Request,
    connections: int,
    seconds: float,
    rate: float | None = None,
    warmup: float = 0.0,
) -> WrkResult:
    """Drive ``request`` with wrk at ``connections`` for ``seconds`` (after a warm-up run)."""
    if warmup > 0:
        Wrk(port, request, connections, warmup, rate).start().result()
    return Wrk(port, request, connections, seconds, rate).start().result()


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
