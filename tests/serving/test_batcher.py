"""The batcher: merging, splitting, isolation of failures, backpressure, timeouts, drain."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from batcher_support import with_batcher

from torchferry.errors import InferenceTimeout, ModelError, ModelNotReady, Overloaded
from torchferry.serving.batcher import Batcher


class Recorder:
    """A deterministic 'model': y = 2x + row-sum, recording every batch size it is given."""

    def __init__(self, delay: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        with self.lock:
            self.sizes.append(x.shape[0])
        if self.delay:
            time.sleep(self.delay)
        if np.any(x < 0):
            raise ValueError("negative input")
        return {"y": 2 * x, "s": x.sum(axis=1)}


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_merged_and_split_exactly():
    model = Recorder()
    rng = np.random.default_rng(0)
    requests = [
        rng.uniform(size=(int(rng.integers(1, 4)), 3)).astype(np.float32) for _ in range(40)
    ]

    async def body(batcher):
        return await asyncio.gather(*(batcher.submit({"x": r}) for r in requests))

    answers = run(with_batcher(model, body, max_batch_size=16, max_delay_ms=50))
    for request, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer["y"], 2 * request)
        np.testing.assert_allclose(answer["s"], request.sum(axis=1), rtol=1e-6)
    assert len(model.sizes) < len(requests)
    assert max(model.sizes) <= 16
    assert sum(model.sizes) == sum(r.shape[0] for r in requests)


def test_stats_count_rows_batches_and_sizes():
    model = Recorder()

    async def body(batcher):
        await asyncio.gather(
            *(batcher.submit({"x": np.ones((2, 3), np.float32)}) for _ in range(8))
        )
        return batcher.stats

    stats = run(with_batcher(model, body, max_batch_size=8, max_delay_ms=50))
    assert stats.inference_count == 16
    assert stats.success_count == 8
    assert stats.execution_count == len(model.sizes)
    assert sum(size * s.count for size, s in stats.by_batch_size.items()) == 16


def test_a_request_is_never_split_and_oversized_requests_run_alone():
    model = Recorder()

    async def body(batcher):
        big = batcher.submit({"x": np.ones((10, 3), np.float32)})
        small = [batcher.submit({"x": np.ones((3, 3), np.float32)}) for _ in range(3)]
        return await asyncio.gather(big, *small)

    answers = run(with_batcher(model, body, max_batch_size=4, max_delay_ms=20))
    assert answers[0]["y"].shape == (10, 3)
    assert 10 in model.sizes
    assert all(a["y"].shape == (3, 3) for a in answers[1:])


def test_requests_with_different_trailing_shapes_are_not_merged():
    model = Recorder()

    async def body(batcher):
        return await asyncio.gather(
            batcher.submit({"x": np.ones((1, 3), np.float32)}),
            batcher.submit({"x": np.ones((1, 5), np.float32)}),
            batcher.submit({"x": np.ones((1, 3), np.float32)}),
        )

    answers = run(with_batcher(model, body, max_batch_size=8, max_delay_ms=20))
    assert [a["y"].shape for a in answers] == [(1, 3), (1, 5), (1, 3)]
    assert sorted(model.sizes) == [1, 2]


def test_a_failing_request_fails_alone_and_the_others_are_answered():
    model = Recorder()

    async def body(batcher):
        good = [batcher.submit({"x": np.ones((1, 3), np.float32)}) for _ in range(5)]
        bad = batcher.submit({"x": -np.ones((1, 3), np.float32)})
        return await asyncio.gather(*good, bad, return_exceptions=True)

    results = run(with_batcher(model, body, max_batch_size=8, max_delay_ms=20))
    assert all(isinstance(r, dict) for r in results[:5])
    assert isinstance(results[5], ModelError)
    assert "negative input" in results[5].message


def test_a_full_queue_refuses_with_overloaded():
    model = Recorder(delay=0.2)

    async def body(batcher):
        results = await asyncio.gather(
            *(batcher.submit({"x": np.ones((4, 3), np.float32)}) for _ in range(6)),
            return_exceptions=True,
        )
        return results

    results = run(with_batcher(model, body, max_batch_size=4, max_delay_ms=0, max_queue_rows=8))
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert refused and refused[0].retry_after > 0
    assert any(isinstance(r, dict) for r in results)


def test_a_slow_model_times_out_with_inference_timeout():
    model = Recorder(delay=0.5)

    async def body(batcher):
        with pytest.raises(InferenceTimeout, match="did not answer"):
            await batcher.submit({"x": np.ones((1, 3), np.float32)}, timeout_s=0.05)

    run(with_batcher(model, body))


def test_close_answers_every_queued_request():
    model = Recorder(delay=0.05)

    async def main():
        batcher = Batcher(model, name="m:1", max_batch_size=2, max_delay_ms=1)
        batcher.start()
        pending = [
            asyncio.ensure_future(batcher.submit({"x": np.ones((1, 3), np.float32)}))
            for _ in range(6)
        ]
        await asyncio.sleep(0)
        await batcher.close()
        return await asyncio.gather(*pending)

    answers = run(main())
    assert len(answers) == 6
    with pytest.raises(ModelNotReady, match="has not started"):
        run(Batcher(model, name="closed").submit({"x": np.ones((1, 3), np.float32)}))


def test_a_lone_request_waits_no_longer_than_max_delay():
    model = Recorder()

    async def body(batcher):
        started = time.perf_counter()
        await batcher.submit({"x": np.ones((1, 3), np.float32)})
        return time.perf_counter() - started

    elapsed = run(with_batcher(model, body, max_batch_size=64, max_delay_ms=30))
    assert 0.025 <= elapsed < 1.0


def test_a_request_that_times_out_mid_batch_leaves_the_others_their_own_rows():
    model = Recorder(delay=0.8)  # the batch computes long after the late one gives up
    late_x = np.full((2, 3), 1, np.float32)
    other_x = np.full((3, 3), 2, np.float32)

    async def body(batcher):
        late = asyncio.ensure_future(batcher.submit({"x": late_x}, timeout_s=0.3))
        other = asyncio.ensure_future(batcher.submit({"x": other_x}))
        (late_outcome,) = await asyncio.gather(late, return_exceptions=True)
        return late_outcome, await other

    # both are queued before the batcher runs, and with no delay it takes them at once
    late, answer = run(with_batcher(model, body, max_batch_size=8, max_delay_ms=0))
    assert isinstance(late, InferenceTimeout)
    assert model.sizes == [5]  # both ran in one batch; the late one gave up while it ran
    np.testing.assert_array_equal(answer["y"], 2 * other_x)


def test_submit_then_runs_the_finish_step_off_the_event_loop():
    model = Recorder(delay=0.05)
    pool = ThreadPoolExecutor(2, thread_name_prefix="post")

    def finish(outputs):
        if outputs["s"][0] > 100:
            raise ValueError("too big")
        return threading.current_thread().name, outputs["y"].tolist()

    async def body(batcher):
        loop_thread = threading.current_thread().name
        xs = [np.full((1, 3), i, np.float32) for i in range(1, 4)]
        answers = await asyncio.gather(
            *(batcher.submit_then({"x": x}, None, pool, finish) for x in xs)
        )
        with pytest.raises(ValueError, match="too big"):
            await batcher.submit_then({"x": np.full((1, 3), 50, np.float32)}, None, pool, finish)
        return loop_thread, answers, xs

    # one row a batch: while batches wait, finishing goes to the pool; the last one, with
    # nothing waiting, finishes on the worker thread without a hand-off
    loop_thread, answers, xs = run(with_batcher(model, body, max_batch_size=1))
    pool.shutdown()
    threads = [thread for thread, _ in answers]
    assert loop_thread not in threads
    assert threads[0].startswith("post") and threads[-1].startswith("infer")
    for (_, y), x in zip(answers, xs, strict=True):
        assert y == (2 * x).tolist()


def test_a_cancelled_caller_frees_its_place_in_the_queue_at_once():
    model = Recorder()

    async def body(batcher):
        waiting = asyncio.ensure_future(batcher.submit({"x": np.ones((3, 3), np.float32)}))
        await asyncio.sleep(0.01)
        assert batcher.queued_rows == 3  # it waits for the batch to fill (1 s)
        waiting.cancel()  # a gRPC client hangs up: grpc.aio cancels the call's task
        await asyncio.gather(waiting, return_exceptions=True)
        return batcher.queued_rows

    assert run(with_batcher(model, body, max_batch_size=64, max_delay_ms=1000)) == 0
    assert model.sizes == []  # nobody waits for it: it never runs
