"""Dynamic batching seen from outside: concurrent requests merge (statistics prove it), and each
batched answer equals the unbatched one."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np

REQUESTS = 64


def v2_body(x: np.ndarray) -> dict:
    return {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }


def outputs(answer: httpx.Response) -> dict[str, np.ndarray]:
    assert answer.status_code == 200, answer.text
    return {
        o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"])
        for o in answer.json()["outputs"]
    }


def batchy_stats(http: httpx.Client) -> dict:
    return http.get("/v2/models/batchy/versions/1/stats").json()["model_stats"][0]


async def fire(url: str, path: str, bodies: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.post(path, json=b) for b in bodies))


def test_concurrent_requests_are_merged_and_answers_match_unbatched(live_server, http):
    rng = np.random.default_rng(7)
    inputs = [
        rng.normal(size=(int(rng.integers(1, 3)), 4)).astype(np.float32) for _ in range(REQUESTS)
    ]
    bodies = [v2_body(x) for x in inputs]
    before = batchy_stats(http)

    answers = asyncio.run(fire(live_server.url, "/v2/models/batchy/infer", bodies))

    after = batchy_stats(http)
    executions = after["execution_count"] - before["execution_count"]
    rows = after["inference_count"] - before["inference_count"]
    assert rows == sum(x.shape[0] for x in inputs)
    assert 1 <= executions < REQUESTS, f"{executions} batches for {REQUESTS} requests"
    merged = [
        b for b in after["batch_stats"] if b["batch_size"] > 2 and b["compute_infer"]["count"]
    ]
    assert merged, after["batch_stats"]
    assert max(b["batch_size"] for b in after["batch_stats"]) <= 16
    success = (
        after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    )
    assert success == REQUESTS

    # the same graph served unbatched (adder v1: same weights), one request at a time
    for x, body, answer in zip(inputs, bodies, answers, strict=True):
        batched = outputs(answer)
        alone = outputs(http.post("/v2/models/adder/versions/1/infer", json=body))
        for name in ("y", "total"):
            np.testing.assert_allclose(batched[name], alone[name], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(batched["y"], x * 2 + 1, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(batched["total"], x.sum(axis=1), rtol=1e-5, atol=1e-5)


def test_v1_rows_batch_too(live_server, http):
    before = batchy_stats(http)["execution_count"]
    bodies = [{"instances": [[float(i), 0.0, 0.0, 1.0]]} for i in range(32)]
    answers = asyncio.run(fire(live_server.url, "/v1/models/batchy:predict", bodies))
    for i, answer in enumerate(answers):
        assert answer.json()["predictions"] == [{"y": [2 * i + 1, 1.0, 1.0, 3.0], "total": i + 1}]
    assert batchy_stats(http)["execution_count"] - before < 32
