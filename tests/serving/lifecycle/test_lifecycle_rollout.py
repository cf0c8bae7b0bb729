"""Rollouts over in-process workers whose figures the tests write (ticks of 20 ms)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from lifecycle_fakes import FakeWorkers, add_version, started

from torchferry.errors import Conflict, ModelNotFound
from torchferry.serving.lifecycle.judging import Window, judge, p99
from torchferry.serving.lifecycle.state import DesiredState, RolloutSpec, RolloutStatus, Routes


@pytest.fixture
def store(tmp_path):
    add_version(tmp_path, "m", 1)
    add_version(tmp_path, "m", 2)
    return tmp_path


async def stable_on_1(store, count=2):
    """Versions 1 and 2 loaded, version 1 serving."""
    fleet, workers = await started(store, count)
    await fleet.set_default("m", 1)
    return fleet, workers


async def pump(workers: FakeWorkers, until: asyncio.Event, **per_version) -> None:
    """Traffic every 10 ms: ``per_version[v] = dict(requests=..., errors=..., ...)``."""
    while not until.is_set():
        for version, figures in per_version.items():
            workers[1].serve("m", int(version.removeprefix("v")), **figures)
        await asyncio.sleep(0.01)


async def rollout_with(fleet, workers, spec: RolloutSpec, timeout: float = 5.0, **traffic):
    done = asyncio.Event()
    pumping = asyncio.create_task(pump(workers, done, **traffic))
    try:
        await fleet.rollouts.start("m", spec)
        return await asyncio.wait_for(fleet.rollouts.wait("m"), timeout)
    finally:
        done.set()
        await pumping


def healthy(**changes):
    return {"requests": 10, "errors": 0, "latency_ms": 5.0, **changes}


def test_nearest_rank_p99():
    assert p99([]) is None
    assert p99([3.0]) == 3.0
    assert p99([float(i) for i in range(1, 101)]) == 99.0
    assert p99([float(i) for i in range(1, 201)]) == 198.0


def test_a_healthy_rollout_steps_up_and_promotes(store, caplog):
    async def scenario():
        fleet, workers = await stable_on_1(store)
        spec = RolloutSpec(version=2, steps=[25, 50, 100], interval_s=0.05, min_requests=20)
        with caplog.at_level(logging.INFO):
            status = await rollout_with(fleet, workers, spec, v1=healthy(), v2=healthy())
        assert status.phase == "promoted"
        assert [d.verdict for d in status.history] == ["advance", "promote"]
        assert [d.weight for d in status.history] == [25, 50]
        assert status.history[0].canary.requests >= 20
        assert status.weight == 100
        assert workers[2].routes["m"] == Routes(default=2)
        assert fleet.effective_default("m") == 2
        saved = DesiredState.read(store)
        assert saved.models["m"].rollout.phase == "promoted"
        events = [r.event for r in caplog.records if hasattr(r, "event")]
        assert "rollout_step" in events
        assert "rollout_promoted" in events
        # at once a rollout back: the ended one's loop never judges it
        await fleet.rollouts.start("m", RolloutSpec(version=1, interval_s=60))
        await asyncio.sleep(0.05)
        assert len([t for t in asyncio.all_tasks() if "_tick" in repr(t.get_coro())]) == 1
        await fleet.rollouts.close()

    asyncio.run(scenario())


def test_errors_roll_back_at_once_without_waiting_for_the_interval(store, caplog):
    async def scenario():
        fleet, workers = await stable_on_1(store)
        spec = RolloutSpec(version=2, steps=[10, 100], interval_s=60, min_requests=20)
        bad = healthy(errors=3)
        with caplog.at_level(logging.INFO):
            status = await rollout_with(fleet, workers, spec, v1=healthy(), v2=bad)
        assert status.phase == "rolled_back"
        assert "error rate 30.00%" in status.reason
        decision = status.history[-1]
        assert decision.verdict == "rollback"
        assert decision.canary.error_rate == pytest.approx(0.3)
        assert decision.stable.errors == 0
        assert status.weight == 0
        for worker in workers.all.values():
            assert worker.routes["m"] == Routes(default=1)
        assert any(getattr(r, "event", None) == "rollout_rolled_back" for r in caplog.records)
        metrics = {m.name: m.samples for m in fleet.rollouts.metrics()}
        assert metrics["torchferry_rollout_state"][0].value == 3
        assert metrics["torchferry_rollout_state"][0].labels == {"model": "m", "version": "2"}

    asyncio.run(scenario())


def test_latency_limits_roll_back(store):
    async def scenario():
        fleet, workers = await stable_on_1(store)
        spec = RolloutSpec(version=2, steps=[50, 100], interval_s=60, min_requests=20,
                           max_p99_ratio=2.0)  # fmt: skip
        slow = healthy(latency_ms=50.0)
        status = await rollout_with(fleet, workers, spec, v1=healthy(), v2=slow)
        assert status.phase == "rolled_back"
        assert "2 x the stable version's 5.0 ms" in status.reason
        spec = RolloutSpec(version=2, steps=[50, 100], interval_s=60, min_requests=20,
                           max_p99_ms=20)  # fmt: skip
        status = await rollout_with(fleet, workers, spec, v1=healthy(), v2=slow)
        assert status.phase == "rolled_back"
        assert "p99 50.0 ms above 20 ms" in status.reason

    asyncio.run(scenario())


def test_a_step_waits_for_enough_traffic(store):
    async def scenario():
        fleet, workers = await stable_on_1(store)
        spec = RolloutSpec(version=2, steps=[10, 100], interval_s=0.02, min_requests=1000)
        await fleet.rollouts.start("m", spec)
        await asyncio.sleep(0.2)  # ten intervals, no request
        status = fleet.rollouts.status("m")
        assert (status.phase, status.weight, status.history) == ("stepping", 10, [])
        assert workers[1].routes["m"] == Routes(default=1, weights={1: 90, 2: 10})
        aborted = await fleet.rollouts.abort("m")
        assert aborted.phase == "aborted"
        assert aborted.history[-1].verdict == "abort"
        assert workers[1].routes["m"] == Routes(default=1)
        with pytest.raises(Conflict, match="no rollout running"):
            await fleet.rollouts.abort("m")

    asyncio.run(scenario())


def test_promote_skips_the_steps_left(store, caplog):
    async def scenario():
        fleet, workers = await stable_on_1(store)
        spec = RolloutSpec(version=2, steps=[10, 50, 100], interval_s=60, min_requests=1000)
        await fleet.rollouts.start("m", spec)
        with caplog.at_level(logging.INFO):
            status = await fleet.rollouts.promote("m")
        assert (status.phase, status.weight, status.step) == ("promoted", 100, 2)
        assert status.reason == "promoted by a management call"
        decision = status.history[-1]
        assert (decision.verdict, decision.step, decision.weight) == ("promote", 0, 10)
        for worker in workers.all.values():
            assert worker.routes["m"] == Routes(default=2)
        assert fleet.effective_default("m") == 2
        assert DesiredState.read(store).models["m"].rollout.phase == "promoted"
        assert any(getattr(r, "event", None) == "rollout_promoted" for r in caplog.records)
        await asyncio.sleep(0.01)  # the loop's cancellation lands
        assert not [t for t in asyncio.all_tasks() if "_tick" in repr(t.get_coro())]
        with pytest.raises(Conflict, match="no rollout running"):
            await fleet.rollouts.promote("m")

    asyncio.run(scenario())


def test_promote_during_the_shadow_check_drops_the_shadow(store):
    async def scenario():
        fleet, workers = await stable_on_1(store)
        spec = RolloutSpec(version=2, steps=[50, 100], interval_s=60, min_requests=1000,
                           min_agreement=0.99)  # fmt: skip
        await fleet.rollouts.start("m", spec)
        assert workers[1].routes["m"].shadow is not None
        status = await fleet.rollouts.promote("m")
        assert status.phase == "promoted"
        assert workers[1].routes["m"] == Routes(default=2)

    asyncio.run(scenario())


def test_shadow_agreement_is_checked_before_the_first_step(store):
    async def scenario():
        fleet, workers = await stable_on_1(store)
        spec = RolloutSpec(version=2, steps=[50, 100], interval_s=0.02, min_requests=20,
                           min_agreement=0.99, shadow_share=0.5)  # fmt: skip
        await fleet.rollouts.start("m", spec)
        assert workers[1].routes["m"].shadow.version == 2
        assert workers[1].routes["m"].shadow.share == 0.5
        assert workers[1].routes["m"].weights == {}
        await fleet.rollouts.abort("m")
        # agreeing: on to the steps; disagreeing: rolled back with the figures
        agree = healthy(compared=10, agreed=10)
        status = await rollout_with(fleet, workers, spec, v1=healthy(), v2=agree)
        assert [d.verdict for d in status.history][:1] == ["advance"]
        assert "shadow agreement 100.00%" in status.history[0].reason
        await fleet.set_default("m", 1)
        disagree = healthy(compared=10, agreed=8)
        status = await rollout_with(fleet, workers, spec, v1=healthy(), v2=disagree)
        assert status.phase == "rolled_back"
        assert "shadow agreement 80.00%" in status.reason
        assert status.history[-1].canary.agreement == pytest.approx(0.8)
        assert status.history[-1].step == -1
        assert workers[2].routes["m"] == Routes(default=1)

    asyncio.run(scenario())


def test_a_rollout_is_refused_when_it_cannot_run(store):
    async def scenario():
        fleet, _ = await stable_on_1(store)
        with pytest.raises(Conflict, match="load version 3 first"):
            await fleet.rollouts.start("m", RolloutSpec(version=3))
        with pytest.raises(Conflict, match="already is the default"):
            await fleet.rollouts.start("m", RolloutSpec(version=1))
        with pytest.raises(ModelNotFound):
            await fleet.rollouts.start("ghost", RolloutSpec(version=1))
        await fleet.rollouts.start("m", RolloutSpec(version=2, interval_s=60))
        with pytest.raises(Conflict, match="is running"):
            await fleet.rollouts.start("m", RolloutSpec(version=2))
        with pytest.raises(Conflict, match="in the rollout in progress"):
            await fleet.unload("m", 1)
        with pytest.raises(Conflict, match="abort it first"):
            await fleet.set_weights("m", {1: 50, 2: 50})
        await fleet.rollouts.close()

    asyncio.run(scenario())


def test_a_restart_resumes_a_running_rollout_at_its_step(store):
    async def scenario():
        fleet, workers = await stable_on_1(store)
        spec = RolloutSpec(version=2, steps=[20, 60, 100], interval_s=0.05, min_requests=20)
        done = asyncio.Event()
        pumping = asyncio.create_task(pump(workers, done, v1=healthy(), v2=healthy()))
        await fleet.rollouts.start("m", spec)
        while fleet.rollouts.status("m").weight < 60:
            await asyncio.sleep(0.01)
        await fleet.rollouts.close()  # the supervisor goes away
        done.set()
        await pumping
        again, workers = await started(store)
        status = again.rollouts.status("m")
        assert (status.phase, status.weight) == ("stepping", 60)
        assert workers[1].routes["m"].weights == {1: 40, 2: 60}
        again.rollouts.resume()
        done = asyncio.Event()
        pumping = asyncio.create_task(pump(workers, done, v1=healthy(), v2=healthy()))
        status = await asyncio.wait_for(again.rollouts.wait("m"), 5)
        done.set()
        await pumping
        assert status.phase == "promoted"
        assert [d.weight for d in status.history] == [20, 60]

    asyncio.run(scenario())


def test_counters_of_a_restarted_worker_never_count_backwards():
    window = Window({1: {2: {"requests": 50, "errors": 5}}})
    window.add({1: {2: {"requests": 60, "errors": 5, "latencies_ms": [1.0]}}})
    # a worker restarted: its counts began again from zero, and all 4 are new
    window.add({1: {2: {"requests": 4, "errors": 0}}})
    window.add({1: {2: {"requests": 6, "errors": 1}}})
    figures = window.figures(2)
    assert (figures.requests, figures.errors) == (16, 1)
    spec = RolloutSpec(version=2, min_requests=10, interval_s=1, max_error_rate=0.1)
    status = RolloutStatus(spec=spec,
                           stable=1, phase="stepping", step=0, weight=10,
                           started_at=0, updated_at=0)  # fmt: skip
    assert judge(status, figures, window.figures(1), elapsed=0.5) is None
    verdict, reason = judge(status, figures, window.figures(1), elapsed=1.5)
    assert verdict == "advance"
    assert "16 requests" in reason


def test_a_worker_that_misses_a_read_is_counted_once_when_it_answers_again():
    window = Window({1: {2: {"requests": 1000, "errors": 10}}, 2: {2: {"requests": 5}}})
    window.add({2: {2: {"requests": 9}}})  # worker 1 did not answer this time
    window.add({1: {2: {"requests": 1006, "errors": 10}}, 2: {2: {"requests": 10}}})
    figures = window.figures(2)
    assert (figures.requests, figures.errors) == (6 + 5, 0)
