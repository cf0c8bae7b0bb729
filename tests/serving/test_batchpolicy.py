"""Adaptive batching without a server: the cost fit, the dispatch rule, the priority queue,
shedding, fixed mode, and instances computing side by side."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from batcher_support import with_batcher

from torchferry.errors import Overloaded
from torchferry.serving.batchcost import MIN_SAMPLES, BatchCost, fit
from torchferry.serving.batcher import Batcher
from torchferry.serving.batchpolicy import SAFETY, ArrivalGap, adaptive_wait
from torchferry.serving.batchqueue import (
    DEFAULT_PRIORITY,
    KEEP_LEVELS,
    MAX_PRIORITY,
    BatchQueue,
    QueuedRequest,
    priority_level,
    shape_key,
)
from torchferry.serving.batchshed import Shedder


class CostlyModel:
    """y = 2x, costing ``fixed_s + per_row_s * rows`` (a sleep); records batch sizes and
    the first value of each batch, in the order batches ran."""

    def __init__(self, fixed_s: float = 0.0, per_row_s: float = 0.0) -> None:
        self.fixed_s, self.per_row_s = fixed_s, per_row_s
        self.sizes: list[int] = []
        self.firsts: list[float] = []
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        with self.lock:
            self.sizes.append(x.shape[0])
            self.firsts.append(float(x[0, 0]))
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.fixed_s + self.per_row_s * x.shape[0])
        with self.lock:
            self.running -= 1
        return {"y": 2 * x}


class Shedding:
    """A BatchObserver that keeps the reasons of the requests shed."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def executed(self, rows: int, compute_s: float) -> None:
        pass

    def pending(self, requests: int) -> None:
        pass

    def shed(self, reason: str) -> None:
        self.reasons.append(reason)


def row(value: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 3), value, np.float32)}


async def warm(batcher: Batcher, batches: int = MIN_SAMPLES) -> None:
    """Enough lone batches for a cost estimate."""
    for _ in range(batches):
        await batcher.submit(row())
    assert batcher.cost.ready


def run_with(model, body, **kwargs):
    return asyncio.run(with_batcher(model, body, **kwargs))


# -- the cost model ---------------------------------------------------------------------------


def test_the_fit_recovers_a_line_and_falls_back_sanely():
    a, b = fit([(n, 0.001 * n + 0.005) for n in (1, 2, 4, 8, 16)])
    assert a == pytest.approx(0.001) and b == pytest.approx(0.005)
    # one distinct size: all of the cost per row, none fixed
    assert fit([(4, 0.008), (4, 0.012)]) == (pytest.approx(0.0025), 0.0)
    # a negative intercept: through the origin
    a, b = fit([(1, 0.0), (2, 0.0), (10, 0.1)])
    assert b == 0.0 and a == pytest.approx(1.0 / 105)
    # a cost that falls with n (noise): flat
    assert fit([(1, 0.02), (8, 0.01)]) == (0.0, pytest.approx(0.015))


def test_no_estimate_before_a_few_batches_then_refits():
    cost = BatchCost()
    for _ in range(MIN_SAMPLES - 1):
        cost.add(1, 0.002)
    assert not cost.ready
    cost.add(8, 0.009)
    assert cost.ready and cost.b > 0
    assert cost.seconds_for_rows(20, 8) == pytest.approx(2 * cost.seconds(8) + cost.seconds(4))


# -- the dispatch rule ------------------------------------------------------------------------


def line(a: float, b: float) -> BatchCost:
    cost = BatchCost()
    cost.a, cost.b, cost.ready = a, b, True
    return cost


def test_wait_only_while_g_is_below_b_over_n():
    cost = line(a=0.001, b=0.010)
    # 4 rows queued: waiting pays while a row comes sooner than b/n = 2.5 ms
    assert adaptive_wait(4, 0.002, 0.0, cost, 32, None) == pytest.approx(0.0025)
    assert adaptive_wait(4, 0.003, 0.0, cost, 32, None) == 0.0
    # a full batch never waits
    assert adaptive_wait(32, 0.0, 0.0, cost, 32, None) == 0.0
    # no fixed cost: batching never raises throughput
    assert adaptive_wait(1, 1e-6, 0.0, line(0.001, 0.0), 32, None) == 0.0


def test_the_objective_bounds_the_wait():
    cost = line(a=0.001, b=0.010)
    objective = 0.040
    # far from the objective: b/n decides
    assert adaptive_wait(4, 0.001, 0.0, cost, 32, objective) == pytest.approx(0.0025)
    # the oldest waited 19 ms: 36 ms (objective less margin) - 19 - t(5) = 2 ms left
    slack = objective * (1 - SAFETY) - 0.019 - cost.seconds(5)
    assert slack == pytest.approx(0.002)
    assert adaptive_wait(4, 0.001, 0.019, cost, 32, objective) == pytest.approx(slack)
    # the next row would come after the slack: dispatch now
    assert adaptive_wait(4, 0.002, 0.020, cost, 32, objective) == 0.0


def test_arrival_gap_follows_the_rate_and_notices_silence():
    gap = ArrivalGap()
    for i in range(20):
        gap.arrived(i * 0.001, 1)
    assert gap.seconds == pytest.approx(0.001)
    assert gap.current(0.019 + 0.5) == pytest.approx(0.5)


def test_a_burst_of_1000_rows_never_exceeds_max_batch_size():
    model = CostlyModel(fixed_s=0.002, per_row_s=0.00005)

    async def body(batcher):
        await warm(batcher)
        answers = await asyncio.gather(*(batcher.submit(row(i)) for i in range(1000)))
        for i, answer in enumerate(answers):
            assert answer["y"][0, 0] == 2 * i
        return batcher

    run_with(model, body, max_batch_size=16, mode="adaptive")
    assert max(model.sizes) <= 16
    assert sum(model.sizes) == 1000 + MIN_SAMPLES
    assert len(model.sizes) < 200  # merged


# -- fixed and adaptive, seen from a lone request ---------------------------------------------


@pytest.mark.parametrize("mode", ["fixed", "adaptive"])
def test_fixed_keeps_its_window_adaptive_skips_it_once_the_cost_is_known(mode):
    model = CostlyModel()

    async def body(batcher):
        await warm(batcher)
        started = time.perf_counter()
        await batcher.submit(row())
        return time.perf_counter() - started

    elapsed = run_with(model, body, max_batch_size=64, max_delay_ms=40, mode=mode)
    if mode == "fixed":
        assert elapsed >= 0.035
    else:  # a model with no fixed cost: waiting never pays
        assert elapsed < 0.03


# -- the queue --------------------------------------------------------------------------------


def queued(level: int, value: float, width: int = 3) -> QueuedRequest:
    inputs = {"x": np.full((1, width), value, np.float32)}
    future = asyncio.get_running_loop().create_future()
    return QueuedRequest(inputs, 1, shape_key(inputs), future, 0.0, level=level)


def test_the_queue_takes_by_level_then_arrival_same_shape_only():
    asyncio.run(_queue_order())


async def _queue_order() -> None:
    queue = BatchQueue()
    low = [queued(200, i) for i in range(3)]
    other = queued(50, 9, width=5)
    high = queued(50, 7)
    default = queued(DEFAULT_PRIORITY, 8)
    for request in [*low, other, high, default]:
        queue.push(request)
    assert queue.rows_ahead(DEFAULT_PRIORITY) == 3 and queue.rows_ahead(300) == 6
    # the head is the first level-50 request (width 5): alone, since nothing shares its shape
    assert queue.take(4) == [other]
    assert queue.take(2) == [high, default]
    assert queue.take(8) == low
    assert queue.requests == 0 and queue.rows == 0


def test_a_high_priority_request_overtakes_a_queue_of_low_ones():
    model = CostlyModel(fixed_s=0.01)

    async def body(batcher):
        low = [asyncio.ensure_future(batcher.submit(row(i), priority=200)) for i in range(10)]
        await asyncio.sleep(0.015)  # the first low one computes
        high = asyncio.ensure_future(batcher.submit(row(99), priority=1))
        await asyncio.gather(*low, high)

    run_with(model, body, max_batch_size=1)
    assert model.firsts.index(99.0) <= 2  # after at most the batches already running


# -- shedding ---------------------------------------------------------------------------------


def test_shed_early_refuses_what_would_miss_its_objective_or_deadline():
    model = CostlyModel(fixed_s=0.02)
    observer = Shedding()

    async def body(batcher):
        await warm(batcher)
        batcher.objective = None
        ahead = asyncio.ensure_future(batcher.submit(row(7)))  # computes 20 ms: others wait
        await asyncio.sleep(0.005)
        batcher.objective = 0.01
        with pytest.raises(Overloaded, match=r"predicted wait .* latency objective of 10.0 ms"):
            await batcher.submit(row())
        batcher.objective = None
        with pytest.raises(Overloaded, match=r"its deadline of 5\.0 ms"):
            await batcher.submit(row(), timeout_s=0.005)
        answer = await batcher.submit(row(), timeout_s=1.0)  # can make it: runs
        await ahead
        return answer

    answer = run_with(model, body, max_latency_ms=10, observer=observer)
    assert answer["y"][0, 0] == 2
    assert observer.reasons == ["objective", "deadline"]


def test_shed_never_runs_them():
    model = CostlyModel(fixed_s=0.02)
    observer = Shedding()

    async def body(batcher):
        await warm(batcher)
        return await batcher.submit(row(3))

    answer = run_with(model, body, max_latency_ms=10, shed="never", observer=observer)
    assert answer["y"][0, 0] == 6 and observer.reasons == []


def test_a_cold_model_sheds_nothing():
    model = CostlyModel(fixed_s=0.02)

    async def body(batcher):
        return await batcher.submit(row(), timeout_s=1.0)

    assert run_with(model, body, max_latency_ms=1)["y"].shape == (1, 3)


def test_queued_requests_that_can_no_longer_make_it_are_shed_when_their_batch_forms():
    model = CostlyModel(fixed_s=0.03)
    observer = Shedding()

    async def body(batcher):
        await warm(batcher)
        batcher.objective = 1.0  # admitted...
        results = asyncio.gather(
            *(batcher.submit(row(i)) for i in range(6)), return_exceptions=True
        )
        await asyncio.sleep(0.01)
        batcher.objective = 0.05  # ...then the objective tightens: the later ones cannot
        return await results

    results = run_with(model, body, max_batch_size=1, observer=observer)
    assert isinstance(results[0], dict)
    shed = [r for r in results if isinstance(r, Overloaded)]
    assert shed and set(observer.reasons) == {"objective"}


def test_an_idle_model_runs_a_lone_request_even_if_its_estimate_exceeds_the_objective():
    model = CostlyModel(fixed_s=0.02)
    observer = Shedding()

    async def body(batcher):
        await warm(batcher)  # estimated 20 ms a batch, over the 10 ms objective
        answer = await batcher.submit(row(4))  # nothing ahead of it: not shed, at submit...
        model.fixed_s = 0.0  # ...nor when its batch forms; the lone ones fix the estimate
        for _ in range(8):
            await batcher.submit(row())
        return answer, batcher.cost.seconds(1)

    answer, estimate = run_with(model, body, max_latency_ms=10, observer=observer)
    assert answer["y"][0, 0] == 8 and observer.reasons == []
    assert estimate < 0.01


def test_a_shed_request_is_not_counted_as_an_arrival():
    model = CostlyModel(fixed_s=0.02)

    async def body(batcher):
        await warm(batcher)
        ahead = asyncio.ensure_future(batcher.submit(row()))
        await asyncio.sleep(0.005)
        last = batcher._gap.last
        with pytest.raises(Overloaded):
            await batcher.submit(row(), timeout_s=0.005)
        await ahead
        return last, batcher._gap.last

    before, after = run_with(model, body)
    assert after == before


def test_a_request_above_max_batch_size_is_predicted_as_one_batch_of_all_its_rows():
    cost = BatchCost()
    cost.a, cost.b, cost.ready = 0.01, 0.0, True  # 10 ms a row
    shedder = Shedder("m:1", "early", None)
    busy = {0: (0.0, 1)}  # a batch computing, finished at 10 ms: nothing left of it at 1 s
    queue = BatchQueue()
    # 8 rows with max_batch_size 4 run as one batch of 8 (80 ms), not 4 (40 ms)
    shedder.admit(8, DEFAULT_PRIORITY, 0.09, 1.0, cost, busy, queue, 4, 1)
    with pytest.raises(Overloaded, match=r"predicted wait 80\.0 ms"):
        shedder.admit(8, DEFAULT_PRIORITY, 0.07, 1.0, cost, busy, queue, 4, 1)


def test_priorities_are_clamped_and_levels_do_not_pile_up():
    assert priority_level(0) == DEFAULT_PRIORITY and priority_level(7) == 7
    assert priority_level(10**12) == MAX_PRIORITY
    queue = BatchQueue()
    loop = asyncio.new_event_loop()
    try:
        for level in range(1, 50):  # lone requests, each at a level of its own
            request = QueuedRequest(row(), 1, shape_key(row()), loop.create_future(), 0.0)
            request.level = level
            queue.push(request)
            assert queue.take(4) == [request]
        assert len(queue._levels) <= KEEP_LEVELS + 1 and DEFAULT_PRIORITY in queue._levels
    finally:
        loop.close()


# -- instances --------------------------------------------------------------------------------


def test_two_instances_compute_two_batches_at_once():
    first, second = CostlyModel(fixed_s=0.15), CostlyModel(fixed_s=0.15)

    async def body(batcher):
        started = time.perf_counter()
        answers = await asyncio.gather(*(batcher.submit(row(i)) for i in range(4)))
        return time.perf_counter() - started, answers, batcher.peak_concurrent

    elapsed, answers, peak = run_with([first, second], body, max_batch_size=1)
    assert [a["y"][0, 0] for a in answers] == [0, 2, 4, 6]
    assert peak == 2 and first.sizes and second.sizes
    assert elapsed < 0.55  # 4 batches of 0.15 s on 2 instances, not 0.6 s on one


def test_the_fit_prices_the_model_not_the_waits_that_inflate_some_batches():
    """A busy server adds time to some batches (the GIL, a neighbour): up to ms on a model
    of tens of us. The fit follows the fastest batch of each size, not the mean."""
    cost = BatchCost()
    rng = np.random.default_rng(3)
    for n in rng.integers(1, 33, 300):
        model_s = 20e-6 * int(n) + 50e-6
        waited = 5e-3 * rng.random() if rng.random() < 0.7 else 0.0
        cost.add(int(n), model_s + waited)
    assert cost.a == pytest.approx(20e-6, rel=0.05) and cost.b == pytest.approx(50e-6, rel=0.2)
    # a plain least-squares fit of the same window would be dominated by the waits
    assert fit(list(cost._samples))[1] > 1e-3
