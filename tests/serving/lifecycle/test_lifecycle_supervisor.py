"""The supervisor's side of the fleet, without worker processes: its view of the workers
and the management listener."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from torchferry.serving.control import Channel
from torchferry.serving.lifecycle.listener import is_loopback, management_listener
from torchferry.serving.lifecycle.workers import WorkerGone
from torchferry.serving.settings import ServerSettings
from torchferry.serving.supervisor import Supervisor


def test_a_worker_whose_channel_closes_is_gone_not_refusing(tmp_path):
    async def scenario():
        supervisor = Supervisor(ServerSettings(store=tmp_path, workers=2))
        ours, theirs = socket.socketpair()
        worker = supervisor.workers[0]
        worker.channel = await Channel.open(ours)
        worker.state = "serving"
        reading = asyncio.create_task(worker.channel.serve())
        assert supervisor.serving() == [1]
        asking = asyncio.create_task(supervisor.ask(1, "load", 5, name="m", version=1))
        await asyncio.sleep(0.05)
        theirs.close()  # the worker died before it answered
        with pytest.raises(WorkerGone, match="worker 1 exited during load"):
            await asking
        with pytest.raises(WorkerGone, match="worker 1 is not running"):
            await supervisor.ask(1, "status", 5)
        with pytest.raises(WorkerGone, match="worker 2 is not running"):
            await supervisor.ask(2, "status", 5)
        await reading

    asyncio.run(scenario())


def test_the_management_listener_warns_when_exposed(tmp_path, caplog):
    supervisor = Supervisor(ServerSettings(store=tmp_path, management_port=None))
    assert management_listener(supervisor.fleet, supervisor.settings) is None
    settings = ServerSettings(store=tmp_path, management_port=0)
    with caplog.at_level(logging.WARNING):
        served, sock = management_listener(supervisor.fleet, settings)
    host = sock.getsockname()[0]
    sock.close()
    assert callable(served)  # the management API's ASGI app
    assert host == "127.0.0.1"
    assert not caplog.records
    settings = ServerSettings(store=tmp_path, management_port=0, management_host="0.0.0.0")
    with caplog.at_level(logging.WARNING):
        _, sock = management_listener(supervisor.fleet, settings)
    sock.close()
    assert [r.event for r in caplog.records] == ["management_exposed"]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("10.1.2.3", False), ("example.com", False)],
)  # fmt: skip
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback
