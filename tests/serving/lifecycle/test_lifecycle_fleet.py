"""The fleet over in-process workers: every change in every worker or in none."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from lifecycle_fakes import FakeWorkers, add_version, started

from torchferry.errors import Conflict, InvalidInput, ModelLoadFailed, ModelNotFound
from torchferry.serving.lifecycle.fleet import Fleet
from torchferry.serving.lifecycle.policy import VersionPolicy
from torchferry.serving.lifecycle.state import DesiredState, Routes, Shadow
from torchferry.serving.settings import ServerSettings


@pytest.fixture
def store(tmp_path):
    add_version(tmp_path, "m", 1)
    add_version(tmp_path, "m", 2)
    add_version(tmp_path, "n", 1)
    return tmp_path


def run(coroutine):
    return asyncio.run(coroutine)


def saved(store) -> DesiredState:
    state = DesiredState.read(store)
    assert state is not None
    return state


def test_start_without_a_state_file_follows_each_models_policy(store):
    async def scenario():
        policies = {"n": VersionPolicy.parse("all")}
        fleet, workers = await started(
            store,
            version_policy=VersionPolicy.parse("latest:1"),
            model_version_policies=policies,
        )
        assert fleet.state.models["m"].versions == [2]
        assert fleet.state.models["n"].versions == [1]
        assert workers[1].active_versions("m") == [2]
        assert fleet.versions[("m", 2)].record["runtime"] == "fake"  # from the start reply
        assert fleet.effective_default("m") == 2

    run(scenario())


def test_a_load_is_two_phase_and_keeps_the_serving_default(store):
    async def scenario():
        add_version(store, "m", 3)
        fleet, workers = await started(store, version_policy=VersionPolicy.parse("latest:1"))
        info = await fleet.load("m", 2)
        assert info.state == "ready"
        assert info.record["path"].endswith("m/2")
        for worker in workers.all.values():
            assert worker.active_versions("m") == [2, 3]
            assert worker.routes["m"].default == 3  # pinned before version 2 went live
            ops = worker.ops()
            assert ops.index("load") < ops.index("routes") < ops.index("activate")
        assert fleet.state.models["m"].policy == VersionPolicy(kind="specific", versions=[2, 3])
        assert saved(store).models["m"].versions == [2, 3]
        # already loaded: at once, nothing built again
        assert (await fleet.load("m", 2)).state == "ready"
        assert workers[1].builds[("m", 2)] == 1

    run(scenario())


def test_a_new_highest_version_becomes_the_default_only_when_asked(store):
    async def scenario():
        add_version(store, "m", 3)
        fleet, workers = await started(store, version_policy=VersionPolicy.parse("latest:1"))
        add_version(store, "m", 4)
        await fleet.load("m", 4, make_default=True)
        assert fleet.effective_default("m") == 4
        assert workers[2].routes["m"].default == 4

    run(scenario())


def test_one_workers_failure_discards_the_version_everywhere(store):
    async def scenario():
        fleet, workers = await started(store, version_policy=VersionPolicy.parse("latest:1"))
        add_version(store, "m", 3)
        workers[2].refuse["load"] = "model m version 3: integrity check failed: bad hash"
        with pytest.raises(ModelLoadFailed) as caught:
            await fleet.load("m", 3)
        message = caught.value.message
        assert "worker 2: model m version 3: integrity check failed: bad hash" in message
        assert workers[1].ops()[-1] == "discard"
        for worker in workers.all.values():
            assert worker.active_versions("m") == [2]
            assert not worker.pending
        info = fleet.versions[("m", 3)]
        assert (info.state, info.reason) == ("failed", message.split(": ", 1)[1])
        row = next(r for r in fleet.index() if (r["name"], r["version"]) == ("m", 3))
        assert row["state"] == "UNAVAILABLE"
        assert "bad hash" in row["reason"]
        assert fleet.state.models["m"].versions == [2]
        # the reason is fixed: the next load works
        del workers[2].refuse["load"]
        assert (await fleet.load("m", 3)).state == "ready"

    run(scenario())


def test_a_corrupt_archive_fails_with_its_reason(store):
    async def scenario():
        fleet, workers = await started(store, 1, version_policy=VersionPolicy.parse("latest:1"))
        add_version(store, "m", 3, broken=True)
        with pytest.raises(ModelLoadFailed, match="integrity check failed") as caught:
            await fleet.load("m", 3)
        assert "worker 1" not in caught.value.message  # one worker: its message is enough
        assert workers[1].active_versions("m") == [2]

    run(scenario())


def test_a_worker_dying_during_a_load_fails_it_naming_the_worker(store):
    async def scenario():
        fleet, workers = await started(store, version_policy=VersionPolicy.parse("latest:1"))
        workers[1].die_on = "load"
        with pytest.raises(ModelLoadFailed, match="worker 1 exited during load"):
            await fleet.load("m", 1)
        assert workers[2].active_versions("m") == [2]
        assert not workers[2].pending
        # its replacement starts from the state the failed change left
        replacement = await workers.start(1, fleet)
        assert replacement.active_versions("m") == [2]

    run(scenario())


def test_concurrent_loads_of_one_version_build_it_once(store):
    async def scenario():
        fleet, workers = await started(store, version_policy=VersionPolicy.parse("latest:1"))
        for worker in workers.all.values():
            worker.load_delay_s = 0.05
        infos = await asyncio.gather(*(fleet.load("m", 1) for _ in range(3)))
        assert all(info.state == "ready" for info in infos)
        for worker in workers.all.values():
            assert worker.builds[("m", 1)] == 1
            assert worker.ops().count("load") == 1

    run(scenario())


def test_an_unload_leaves_the_routes_before_the_version_goes(store):
    async def scenario():
        fleet, workers = await started(store)
        await fleet.set_weights("m", {1: 70, 2: 30})
        await fleet.set_shadow("m", Shadow(version=1, share=0.5))
        assert await fleet.unload("m", 1) == [1]
        for worker in workers.all.values():
            routes_at = max(i for i, (op, _) in enumerate(worker.received) if op == "routes")
            unload_at = worker.ops().index("unload")
            assert routes_at < unload_at
            sent = Routes.model_validate(worker.received[routes_at][1]["routes"])
            assert sent == Routes(weights={2: 30})
            assert worker.active_versions("m") == [2]
        assert fleet.state.models["m"].policy == VersionPolicy(kind="specific", versions=[2])
        with pytest.raises(ModelNotFound, match="version 1 is not loaded"):
            await fleet.unload("m", 1)
        assert await fleet.unload("m") == [2]
        assert fleet.state.models["m"].policy is None
        with pytest.raises(ModelNotFound):
            await fleet.unload("m")
        assert saved(store).models["m"].versions == []

    run(scenario())


def test_routing_changes_are_checked_and_reach_every_worker(store):
    async def scenario():
        fleet, workers = await started(store)
        with pytest.raises(Conflict, match="version 5 is not loaded"):
            await fleet.set_weights("m", {1: 50, 5: 50})
        with pytest.raises(InvalidInput, match="must not all be zero"):
            await fleet.set_weights("m", {1: 0, 2: 0})
        routes = await fleet.set_weights("m", {1: 90, 2: 10})
        assert workers[2].routes["m"].weights == {1: 90, 2: 10} == routes.weights
        await fleet.set_default("m", 1)  # clears the split, or it would go on deciding
        assert workers[1].routes["m"] == Routes(default=1)
        with pytest.raises(ModelNotFound):
            await fleet.set_default("m", 7)
        with pytest.raises(Conflict, match="version 9 is not loaded"):
            await fleet.set_shadow("m", Shadow(version=9))
        await fleet.set_weights("m", None)
        assert saved(store).models["m"].routes == Routes(default=1)

    run(scenario())


def test_a_refused_routing_change_puts_the_old_routes_back(store):
    async def scenario():
        fleet, workers = await started(store)
        workers[2].refuse["routes"] = "no"
        with pytest.raises(Conflict, match="routing not changed: worker 2: no"):
            await fleet.set_default("m", 1)
        assert fleet.state.models["m"].routes == Routes()
        assert workers[1].routes["m"] == Routes()

    run(scenario())


def test_a_restart_restores_the_state(store, caplog):
    async def scenario():
        fleet, _ = await started(store)
        await fleet.set_weights("m", {1: 80, 2: 20})
        await fleet.unload("n")
        again, workers = await started(store)
        assert again.state.models == fleet.state.models
        assert workers[1].routes["m"].weights == {1: 80, 2: 20}
        assert workers[1].active_versions("n") == []
        # a version that left the store meanwhile is dropped, with a warning
        for path in (store / "m" / "2").iterdir():
            path.unlink()
        (store / "m" / "2").rmdir()
        with caplog.at_level(logging.WARNING):
            third, workers = await started(store)
        assert "version(s) 2 are no longer in the store" in caplog.text
        assert third.state.models["m"].versions == [1]
        assert third.state.models["m"].routes == Routes(weights={1: 80})
        assert workers[2].active_versions("m") == [1]

    run(scenario())


def test_staging_copies_a_source_in_as_the_next_version(store, tmp_path_factory):
    async def scenario():
        source = add_version(tmp_path_factory.mktemp("elsewhere"), "x", 7)
        fleet, workers = await started(store)
        assert await fleet.stage(source, "m") == ("m", 3)
        info = await fleet.load("m", 3)
        assert info.source == str(source)
        assert json.loads((store / "m" / "3" / "manifest.json").read_text())["name"] == "m"
        workers[1].refuse["stage"] = "not an archive"
        with pytest.raises(ModelLoadFailed, match="was not staged: not an archive"):
            await fleet.stage(source, None)

    run(scenario())


def test_model_dir_mode_adopts_the_first_workers_state(tmp_path):
    async def scenario():
        workers = FakeWorkers(1)
        settings = ServerSettings(model_dir=tmp_path, model_name="m")
        fleet = Fleet(workers, settings)
        fleet.restore()
        assert fleet.start_state() is None
        status = {"models": [{"name": "m", "version": 1}], "routes": {"m": {"default": 1}}}
        await fleet.joined(1, status)
        assert fleet.state.models["m"].versions == [1]
        assert fleet.effective_default("m") == 1
        with pytest.raises(Conflict, match="needs a model store"):
            await fleet.load("m", 2)
        with pytest.raises(Conflict, match="needs a model store"):
            await fleet.stage(tmp_path, None)
        assert not (tmp_path / ".torchferry").exists()

    run(scenario())


def test_stats_are_summed_over_the_workers(store):
    async def scenario():
        fleet, workers = await started(store)
        workers[1].serve("m", 2, requests=3, errors=1, latency_ms=4.0)
        workers[2].serve("m", 2, requests=2, latency_ms=9.0, compared=2, agreed=1)
        figures = await fleet.stats("m", drain=True)
        assert figures[2]["requests"] == 5
        assert figures[2]["errors"] == 1
        assert (figures[2]["compared"], figures[2]["agreed"]) == (2, 1)
        assert figures[2]["max_abs_diff"] == 0.5
        assert sorted(figures[2]["latencies_ms"]) == [4.0, 4.0, 4.0, 9.0, 9.0]
        assert (await fleet.stats("m", drain=True))[2]["latencies_ms"] == []  # drained
        with pytest.raises(ModelNotFound):
            await fleet.stats("nope", drain=False)

    run(scenario())


def test_triton_load_and_set_policy_converge_on_the_store(store):
    async def scenario():
        fleet, workers = await started(store, version_policy=VersionPolicy.parse("latest:1"))
        await fleet.unload("m")
        assert await fleet.load_model("m") == [2]  # the server's policy again
        assert await fleet.set_policy("m", VersionPolicy.parse("all")) == [1, 2]
        assert await fleet.set_policy("m", VersionPolicy.parse("specific:1")) == [1]
        assert workers[2].active_versions("m") == [1]
        assert saved(store).models["m"].policy == VersionPolicy.parse("specific:1")
        with pytest.raises(ModelNotFound, match="not in the store"):
            await fleet.load_model("ghost")

    run(scenario())


def test_the_index_lists_the_store_and_what_is_loaded(store):
    async def scenario():
        fleet, _ = await started(store, version_policy=VersionPolicy.parse("latest:1"))
        rows = {(r["name"], r["version"]): (r["state"], r["reason"]) for r in fleet.index()}
        assert rows == {
            ("m", 1): ("UNAVAILABLE", "unloaded"),
            ("m", 2): ("READY", None),
            ("n", 1): ("READY", None),
        }

    run(scenario())


def test_a_refused_staged_version_leaves_nothing_and_a_poll_never_loads_it_first(
    store, tmp_path_factory
):
    async def scenario():
        source = add_version(tmp_path_factory.mktemp("elsewhere"), "x", 7)
        fleet, workers = await started(store)
        assert await fleet.stage(source, "m") == ("m", 3)
        # a poll (or Triton's load) between staging and loading leaves the claimed version
        assert (await fleet.converge("m", VersionPolicy.parse("all"))).versions == [1, 2]
        workers[1].refuse["load"] = "the warm-up inference failed"
        with pytest.raises(ModelLoadFailed, match="warm-up"):
            await fleet.load("m", 3)
        assert not (store / "m" / "3").exists()  # the refused copy left the store
        assert fleet.versions[("m", 3)].state == "failed"
        assert await fleet.unload("m", 3) == [3]  # a failed version can be deleted
        assert ("m", 3) not in fleet.versions

    run(scenario())


def test_a_policy_that_selects_nothing_is_refused_and_not_saved(store):
    async def scenario():
        fleet, _ = await started(store)
        with pytest.raises(InvalidInput, match="selects none"):
            await fleet.set_policy("m", VersionPolicy.parse("specific:7"))
        assert fleet.state.models["m"].versions == [1, 2]
        assert fleet.state.models["m"].policy != VersionPolicy.parse("specific:7")

    run(scenario())
