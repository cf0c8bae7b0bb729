"""The store poller over in-process workers."""

from __future__ import annotations

import asyncio
import logging
import shutil

import pytest
from lifecycle_fakes import add_version, started

from torchferry.serving.lifecycle.policy import VersionPolicy
from torchferry.serving.lifecycle.poll import StorePoller


@pytest.fixture
def store(tmp_path):
    add_version(tmp_path, "m", 1)
    return tmp_path


def failures_logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "poll_load_failed"]


def test_new_versions_are_loaded_and_removed_ones_unloaded(store):
    async def scenario():
        fleet, workers = await started(store)
        poller = StorePoller(fleet, 60)
        add_version(store, "m", 2)
        add_version(store, "fresh", 1)
        await poller.poll()
        assert workers[1].active_versions("m") == [1, 2]
        assert workers[2].active_versions("fresh") == [1]
        assert fleet.effective_default("m") == 2  # the policy's new version serves
        shutil.rmtree(store / "m" / "1")
        await poller.poll()
        assert fleet.state.models["m"].versions == [2]
        assert workers[2].active_versions("m") == [2]

    asyncio.run(scenario())


def test_a_partly_copied_version_is_retried_and_logged_once(store, caplog):
    async def scenario():
        fleet, workers = await started(store)
        poller = StorePoller(fleet, 60)
        add_version(store, "m", 2, broken=True)  # its hashes do not match (yet)
        with caplog.at_level(logging.WARNING):
            await poller.poll()
            await poller.poll()
        logged = failures_logged(caplog)
        assert len(logged) == 1
        assert "integrity check failed" in logged[0]
        assert workers[1].active_versions("m") == [1]
        assert fleet.versions[("m", 2)].state == "failed"
        add_version(store, "m", 2)  # the copy completed
        await poller.poll()
        assert workers[1].active_versions("m") == [1, 2]
        assert fleet.versions[("m", 2)].state == "ready"

    asyncio.run(scenario())


def test_latest_unloads_the_old_version_only_once_the_new_one_serves(store):
    async def scenario():
        fleet, workers = await started(store, version_policy=VersionPolicy.parse("latest:1"))
        poller = StorePoller(fleet, 60)
        add_version(store, "m", 2, broken=True)
        await poller.poll()
        assert workers[1].active_versions("m") == [1]  # never fewer versions serving
        add_version(store, "m", 2)
        await poller.poll()
        assert workers[1].active_versions("m") == [2]

    asyncio.run(scenario())


def test_what_a_management_call_chose_is_kept(store):
    async def scenario():
        fleet, workers = await started(store)
        add_version(store, "m", 2)
        add_version(store, "m", 3)
        await fleet.load("m", 3)  # the operator's choice: versions 1 and 3
        poller = StorePoller(fleet, 60)
        await poller.poll()
        assert workers[1].active_versions("m") == [1, 3]
        await fleet.unload("m")
        await poller.poll()
        assert workers[1].active_versions("m") == []

    asyncio.run(scenario())


def test_the_poller_runs_every_interval(store):
    async def scenario():
        fleet, workers = await started(store)
        running = asyncio.create_task(StorePoller(fleet, 0.02).run())
        add_version(store, "m", 2)
        for _ in range(100):
            if workers[1].active_versions("m") == [1, 2]:
                break
            await asyncio.sleep(0.02)
        running.cancel()
        assert workers[1].active_versions("m") == [1, 2]

    asyncio.run(scenario())
