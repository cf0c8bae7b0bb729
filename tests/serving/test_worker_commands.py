"""The supervisor's model commands, sent over a real control channel (a socketpair) to a
real worker process serving real HTTP: start from a desired state, stage, load (pending, no
traffic), activate, routes, stats, a refused load and routes, unload, status, drain."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from versions_store import build_versions_store, candidate, corrupt_copy

from torchferry.serving.control import Channel, ControlError
from torchferry.serving.lifecycle.state import DesiredState, ModelState, Routes
from torchferry.serving.process import free_ports
from torchferry.serving.settings import ServerSettings

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def test_a_worker_changes_its_models_on_the_supervisors_commands(tmp_path: Path):
    root = build_versions_store(tmp_path / "store").root
    (port,) = free_ports(1)
    parent, child = socket.socketpair()
    worker = subprocess.Popen(
        [sys.executable, "-m", "torchferry.serving.worker", "--control-fd", str(child.fileno())],
        pass_fds=[child.fileno()],
    )
    child.close()
    settings = ServerSettings(
        store=root, port=port, grpc_port=None, metrics_port=None, access_log=False, threads=1,
        log_level="warning",
    )  # fmt: skip
    state = DesiredState(models={"lin": ModelState(versions=[1], routes=Routes(default=1))})

    async def session() -> None:
        channel = await Channel.open(parent)
        reading = asyncio.create_task(channel.serve())
        request = channel.request
        status = await request(
            "start",
            timeout=60,
            worker=0,
            settings=settings.model_dump(mode="json"),
            state=state.model_dump(mode="json"),
        )
        (record,) = status["models"]
        assert (record["name"], record["version"], record["runtime"]) == ("lin", 1, "onnxruntime")
        assert record["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert record["path"] == str(root / "lin" / "1") and record["size_bytes"] > 0
        assert record["signed"] is False and record["signature"] == "unsigned"
        assert status["routes"] == {"lin": Routes(default=1).model_dump(mode="json")}
        await request("release")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as web:

            async def served(path: str = "/v2/models/lin/infer") -> int:
                response = await web.post(path, json=BODY)
                assert response.status_code == 200, response.text
                return int(response.headers["x-model-version"])

            # stage: copied in as the next version; a version already in the store: as is
            staged = await request(
                "stage", timeout=60, source=str(candidate(root, 3)), name=None, store=str(root)
            )
            assert staged == {"name": "lin", "version": 2, "path": str(root / "lin" / "2")}
            again = await request("stage", source=staged["path"], name=None, store=str(root))
            assert again == staged
            # load: pending, no traffic; twice is once
            loaded = await request("load", timeout=60, name="lin", version=2, path=staged["path"])
            assert loaded["version"] == 2 and loaded["load_seconds"] > 0
            assert await request("load", name="lin", version=2, path=staged["path"]) == loaded
            missing = await web.post("/v2/models/lin/versions/2/infer", json=BODY)
            assert missing.status_code == 404
            await request("activate", name="lin", version=2)
            await request("activate", name="lin", version=2)
            assert await served() == 1  # the default is pinned
            assert await served("/v2/models/lin/versions/2/infer") == 2
            # routes: a shadow, then stats
            shadow = Routes(default=1, shadow={"version": 2, "share": 1.0})
            await request("routes", name="lin", routes=shadow.model_dump(mode="json"))
            for _ in range(5):
                assert await served() == 1
            await asyncio.sleep(0.2)
            stats = await request("stats", name="lin", drain=True)
            assert set(stats) == {"1", "2"}
            # counted since it was loaded: the one routed request before the shadow too
            assert stats["1"]["requests"] == 6 and stats["1"]["errors"] == 0
            assert len(stats["1"]["latencies_ms"]) == 6
            assert stats["2"]["compared"] == 5 and stats["2"]["agreed"] < 5  # 2 is perturbed
            assert (await request("stats", name="lin", drain=False))["1"]["latencies_ms"] == []
            # refusals carry their reason
            with pytest.raises(ControlError, match=r"version\(s\) \[9\], which are not loaded"):
                await request("routes", name="lin", routes={"weights": {"1": 50, "9": 50}})
            corrupt = corrupt_copy(Path(staged["path"]), tmp_path / "corrupt")
            with pytest.raises(ControlError, match="model 'lin' version 3: integrity check"):
                await request("load", timeout=60, name="lin", version=3, path=str(corrupt))
            await request("discard", name="lin", version=3)
            # unload: out of the routes at once, answered once released; twice is once
            await request("unload", timeout=60, name="lin", version=1)
            await request("unload", timeout=60, name="lin", version=1)
            assert await served() == 2
            status = await request("status")
            assert [m["version"] for m in status["models"]] == [2]
            # 1 left the default; the shadow stays (a routed request never mirrors to itself)
            left = Routes(shadow={"version": 2, "share": 1.0})
            assert status["routes"] == {"lin": left.model_dump(mode="json")}
            await request("drain")
        await asyncio.wait_for(reading, 30)

    asyncio.run(session())
    assert worker.wait(30) == 0
    parent.close()
