"""Readiness before the repository has started (in process, over ASGI, no lifespan)."""

from __future__ import annotations

import asyncio

import httpx

from torchferry.serving.app import build_app
from torchferry.serving.repository import ModelRepository
from torchferry.serving.settings import ServerSettings


def test_not_ready_until_started_then_ready(model_store):
    settings = ServerSettings(store=model_store.root, threads=1)
    repository = ModelRepository(settings)
    repository.load_store(model_store, ["adder"])
    app = build_app(settings, repository)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get("/v2/health/live")).status_code == 200
            not_ready = await client.get("/v2/health/ready")
            assert not_ready.status_code == 503 and not_ready.json() == {"ready": False}
            assert (await client.get("/v2/models/adder/ready")).status_code == 503
            assert (await client.get("/v1/models/adder")).json()["ready"] is False

            await repository.start()  # what the app's lifespan does
            try:
                assert (await client.get("/v2/health/ready")).json() == {"ready": True}
                assert (await client.get("/v2/models/adder/versions/1/ready")).status_code == 200
                tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}
                answer = await client.post("/v2/models/adder/infer", json={"inputs": [tensor]})
                assert answer.status_code == 200
                assert answer.json()["outputs"][0]["data"] == [1.0] * 4
            finally:
                await repository.close()

    asyncio.run(scenario())
