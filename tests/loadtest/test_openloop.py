"""The open-loop generator without a model server: the schedule's rate and exponential gaps
(seeded), latency counted from the scheduled start even when the generator runs late, and
the connection cap's client-side misses, against a small asyncio responder on a real port."""

from __future__ import annotations

import asyncio
import itertools
import math
import statistics
import time

import pytest

from torchferry.loadtest.generator import HttpRequest, Window
from torchferry.loadtest.openloop import NO_CONNECTION, http_open_load, schedule
from torchferry.loadtest.openrun import RateStep

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_poisson_schedule_has_the_rate_and_exponential_gaps():
    rate, seconds = 1000.0, 20.0
    offsets = schedule(rate, seconds, seed=7)
    assert offsets == schedule(rate, seconds, seed=7)  # seeded: the same run again
    assert offsets != schedule(rate, seconds, seed=8)
    assert offsets == sorted(offsets) and offsets[0] > 0 and offsets[-1] < seconds
    # a Poisson count has sd sqrt(20000) ~ 141: 4 sd either side
    assert abs(len(offsets) - rate * seconds) < 4 * math.sqrt(rate * seconds)
    gaps = [b - a for a, b in zip([0.0, *offsets], offsets, strict=False)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / rate, rel=0.03)
    # exponential: sd equals the mean, P(gap > mean) = 1/e, P(gap > 3 mean) = e^-3
    assert statistics.pstdev(gaps) / mean == pytest.approx(1.0, abs=0.05)
    assert sum(g > mean for g in gaps) / len(gaps) == pytest.approx(math.exp(-1), abs=0.02)
    assert sum(g > 3 * mean for g in gaps) / len(gaps) == pytest.approx(math.exp(-3), abs=0.01)


def test_uniform_schedule_is_even_and_no_rate_is_no_request():
    offsets = schedule(100.0, 1.0, seed=0, arrivals="uniform")
    assert len(offsets) == 99 and offsets[0] == pytest.approx(0.01)
    assert max(b - a for a, b in itertools.pairwise(offsets)) == pytest.approx(0.01)
    assert schedule(0.0, 1.0, seed=0) == []
    with pytest.raises(ValueError, match="arrivals"):
        schedule(1.0, 1.0, seed=0, arrivals="bursty")


async def _responder(delay_s: float, keep_alive_s: float = 60.0) -> asyncio.Server:
    """Answers each request on a connection after ``delay_s``, one at a time; closes a
    connection idle for ``keep_alive_s`` (as uvicorn's keep-alive timeout does)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(keep_alive_s):
                        head = await reader.readuntil(b"\r\n\r\n")
                except TimeoutError:
                    writer.close()
                    return
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                await asyncio.sleep(delay_s)
                writer.write(ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _window(measure_after: float = 0.0, seconds: float = 1.0) -> Window:
    start = time.time() + 0.05
    return Window(start, start + measure_after, start + seconds, timeout_s=5.0)


def _run(
    delay_s: float,
    offsets: list[float],
    stall_s: float = 0.0,
    cap: int = 512,
    keep_alive_s: float = 60.0,
) -> RateStep:
    async def main() -> RateStep:
        server = await _responder(delay_s, keep_alive_s)
        port = server.sockets[0].getsockname()[1]

        async def stall() -> None:  # the generator's process busy elsewhere: it runs late
            await asyncio.sleep(0.04)
            time.sleep(stall_s)

        request = HttpRequest("/x", b"{}", "application/json")
        async with server:
            staller = asyncio.ensure_future(stall())
            result = await http_open_load("127.0.0.1", port, request, offsets, _window(), cap)
            await staller
        return RateStep.of(len(offsets), result)

    return asyncio.run(main())


def test_latency_counts_from_the_scheduled_start_and_lag_is_reported():
    # the generator is blocked for 0.3 s when the request is due: the server answers in
    # 0.05 s, but the request is 0.35 s late from its schedule, and the lag says why
    step = _run(0.05, [0.0], stall_s=0.3)
    assert step.ok == 1 and step.errors == {}
    assert step.p50_ms >= 330 and step.lag_p99_ms >= 250
    on_time = _run(0.05, [0.0])
    assert 50 <= on_time.p50_ms < 300 and on_time.lag_p99_ms < 50


def test_a_request_that_finds_every_connection_busy_is_a_client_miss():
    # one connection, and a second request due while the first (0.2 s) still holds it
    step = _run(0.2, [0.0, 0.05, 0.4], cap=1)
    assert step.scheduled == 3 and step.ok == 2
    assert step.errors == {NO_CONNECTION: 1}
    assert step.p99_all_ms == math.inf  # a miss breaks any objective
    assert not step.holds(10_000)
    assert step.peak_connections == 1


def test_a_connection_the_server_closed_while_idle_is_not_reused():
    # at a low rate a keep-alive connection outlives the server's idle timeout: the next
    # request goes on a fresh connection instead of failing on the closed one
    step = _run(0.0, [0.0, 0.5], keep_alive_s=0.2)
    assert step.ok == 2 and step.errors == {}
