"""Where batches run (inline on the loop, or on the instance's thread), and shedding that
only refuses what saves the others time."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
from batcher_support import with_batcher

from torchferry.errors import InferenceTimeout, Overloaded
from torchferry.serving.batchcost import MIN_SAMPLES, BatchCost
from torchferry.serving.batchinline import (
    INLINE_COMPUTE_S,
    PROBE_AT_MOST,
    PROBE_EVERY,
    InlineGate,
)
from torchferry.serving.batchqueue import QueuedRequest, shape_key
from torchferry.serving.batchshed import Shedder


def learnt(seconds_per_batch: float) -> BatchCost:
    cost = BatchCost()
    for _ in range(MIN_SAMPLES):
        cost.add(1, seconds_per_batch)
    return cost


def test_nothing_runs_inline_before_the_cost_is_known_and_fast_batches_then_do():
    gate = InlineGate()
    assert not gate.inline(1, BatchCost())
    fast = learnt(INLINE_COMPUTE_S / 10)
    assert gate.inline(1, fast) and gate.inline(5, fast)
    assert not gate.inline(200, fast)  # predicted at 20 times the limit: never inline


def test_a_slow_model_never_blocks_the_loop():
    gate, slow = InlineGate(), learnt(0.04)
    assert not any(gate.inline(1, slow) for _ in range(10 * PROBE_AT_MOST))


def test_a_model_that_may_only_look_slow_is_probed_less_often_while_it_stays_slow():
    gate, unsure = InlineGate(), learnt(0.003)  # under the limit plus a switch interval

    def batches_to_next_probe(probe_s: float) -> int:
        """Thread-run batches before the next inline probe, which takes ``probe_s``."""
        for count in range(2 * PROBE_AT_MOST):
            if gate.inline(1, unsure):
                gate.ran_inline(probe_s)
                return count
        raise AssertionError("no probe")

    assert batches_to_next_probe(0.003) == 0  # the first candidate, at once
    gaps = [batches_to_next_probe(0.003) for _ in range(7)]
    doubling = [PROBE_EVERY * 2**k - 1 for k in (1, 2, 3, 4)]
    assert gaps == doubling + [PROBE_AT_MOST - 1] * 3
    batches_to_next_probe(INLINE_COMPUTE_S / 10)  # this probe finds it fast...
    assert batches_to_next_probe(0.003) == PROBE_EVERY - 1  # ...so the next one comes soon


def test_a_fast_model_timed_slow_on_its_thread_moves_to_the_loop():
    """On a busy server a batch timed on the worker thread also holds the thread's wait for
    the GIL (here: a sleep off the loop's thread). The batcher must still find out that the
    model is fast, rather than keep it on the slow path because it was timed there."""
    ran_on: list[str] = []

    def model(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ran_on.append(threading.current_thread().name)
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.003)
        return {"y": inputs["x"] * 2}

    async def body(batcher):
        for i in range(40):
            answer = await batcher.submit({"x": np.full((1, 2), i, np.float32)})
            assert answer["y"][0, 0] == 2 * i
        return batcher

    asyncio.run(with_batcher(model, body, max_batch_size=4))
    assert ran_on[0].startswith("infer")  # the first batches, before the cost is known
    assert set(ran_on[-10:]) == {threading.main_thread().name}


def _batch(
    loop: asyncio.AbstractEventLoop, arrived: float, count: int, deadline: float | None = None
) -> list[QueuedRequest]:
    inputs = {"x": np.zeros((1, 2), np.float32)}
    return [
        QueuedRequest(
            inputs, 1, shape_key(inputs), loop.create_future(), arrived, deadline=deadline
        )
        for _ in range(count)
    ]


def test_late_requests_of_a_cheap_model_are_answered_not_shed():
    """Requests that waited past the objective in front of a model that costs microseconds
    were held up by the event loop, not by the model: refusing them saves nobody anything."""

    async def body() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        shedder = Shedder("m:1", "early", 0.05)
        now = time.perf_counter()
        cheap, costly = learnt(0.00005), learnt(0.02)
        kept_cheap = shedder.recheck(_batch(loop, now - 0.1, 4), now, cheap, alone=False)
        costly_batch = _batch(loop, now - 0.1, 4)
        kept_costly = shedder.recheck(costly_batch, now, costly, alone=False)
        assert all(isinstance(r.future.exception(), Overloaded) for r in costly_batch)
        return len(kept_cheap), len(kept_costly)

    assert asyncio.run(body()) == (4, 0)


def test_one_request_with_a_tight_deadline_does_not_get_its_batch_shed():
    """Each request's own limit decides: one past its 2 ms deadline gets its 504, and the
    late requests beside it (50 ms objective, a 50 us model) are still answered."""

    async def body() -> tuple[int, list[type]]:
        loop = asyncio.get_running_loop()
        shedder = Shedder("m:1", "early", 0.05)
        now = time.perf_counter()
        late = _batch(loop, now - 0.06, 3)
        expired = _batch(loop, now - 0.003, 1, deadline=now - 0.001)
        kept = shedder.recheck(late + expired, now, learnt(0.00005), alone=False)
        return len(kept), [type(r.future.exception()) for r in expired]

    assert asyncio.run(body()) == (3, [InferenceTimeout])
