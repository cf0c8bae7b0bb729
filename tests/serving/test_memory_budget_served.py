"""Issue 14's bar for bounded memory: 20 models served under a ``--memory-budget`` that
fits 5. Each model is ``y = x @ W`` with its own W, so every answer proves which model ran.
Every request (rounds in order, then concurrent ones in shuffled order) is answered
correctly; a request that waited for its model to load says so (``X-Torchferry-Cold-Load``,
gRPC's ``torchferry-cold-load`` trailer), a warm one does not; the metrics count the loads
and evictions, and the resident bytes stay within the budget."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from versions_store import write_lin

from torchferry.archive import ModelStore
from torchferry.serving.metrics_render import parse_metrics, sample_value
from torchferry.serving.process import ServerProcess, serve_in_subprocess
from torchferry.serving.protos import inference_pb2 as pb
from torchferry.serving.protos.inference_pb2_grpc import GRPCInferenceServiceStub
from torchferry.serving.residency import estimate_bytes

MODELS = [f"m{i:02d}" for i in range(20)]
FITS = 5
COLD = "x-torchferry-cold-load"


def weights(name: str) -> np.ndarray:
    return np.random.default_rng(int(name[1:])).normal(size=(4, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def budget_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    store = ModelStore(tmp_path_factory.mktemp("store"))
    for name in MODELS:
        write_lin(store, 1, weights(name), name=name)
    size = estimate_bytes(store.open(MODELS[0], 1), "onnxruntime")
    budget = FITS * size + size // 2  # 5 fit, 6 do not
    args = [
        "--store", str(store.root), "--threads", "1", "--memory-budget", str(budget),
        "--no-management",
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with serve_in_subprocess(args, log) as server:
        yield server, budget


def body(x: np.ndarray) -> dict:
    return {
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]
    }


def check(name: str, x: np.ndarray, answer: httpx.Response) -> None:
    assert answer.status_code == 200, answer.text
    y = np.array(answer.json()["outputs"][0]["data"], np.float32).reshape(len(x), 3)
    np.testing.assert_allclose(y, x @ weights(name), rtol=1e-5, atol=1e-5)


def metrics(server: ServerProcess) -> list:
    return parse_metrics(httpx.get(server.metrics_url, timeout=10).text)


def test_every_model_answers_and_a_cold_load_is_reported(budget_server):
    server, _ = budget_server
    rng = np.random.default_rng(0)
    with server.client() as http:
        for name in MODELS:  # in order: each is cold (20 models, room for 5)
            x = rng.normal(size=(2, 4)).astype(np.float32)
            first = http.post(f"/v2/models/{name}/infer", json=body(x))
            check(name, x, first)
            assert float(first.headers[COLD]) > 0, name
            warm = http.post(f"/v2/models/{name}/infer", json=body(x))
            check(name, x, warm)
            assert COLD not in warm.headers, name
        # /predict takes the same path: the first model was evicted long ago
        cold = http.post(f"/predict/{MODELS[0]}", json={"data": [[1.0, 2.0, 3.0, 4.0]]})
        assert cold.status_code == 200 and COLD in cold.headers, cold.text
        expected = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32) @ weights(MODELS[0])
        np.testing.assert_allclose(cold.json()["result"], expected, rtol=1e-5)


def test_concurrent_rounds_over_every_model_are_all_correct(budget_server):
    server, budget = budget_server
    rng = np.random.default_rng(1)
    calls = [(name, rng.normal(size=(1 + i % 3, 4)).astype(np.float32)) for i, name in
             enumerate(MODELS * 3)]  # fmt: skip
    random.Random(2).shuffle(calls)

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=12)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
            return await asyncio.gather(
                *(http.post(f"/v2/models/{name}/infer", json=body(x)) for name, x in calls)
            )

    for (name, x), answer in zip(calls, asyncio.run(fire()), strict=True):
        check(name, x, answer)
    samples = metrics(server)
    assert sample_value(samples, "torchferry_cold_loads_total") >= len(MODELS)
    assert sample_value(samples, "torchferry_evictions_total") >= len(MODELS) - FITS
    assert 0 < sample_value(samples, "torchferry_resident_bytes") <= budget
    assert sample_value(samples, "torchferry_cold_load_seconds_count") >= len(MODELS)


def test_grpc_reports_a_cold_load_in_its_trailer(budget_server):
    server, _ = budget_server
    x = np.ones((1, 4), np.float32)

    def infer(name: str) -> tuple[np.ndarray, dict[str, str]]:
        tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=x.shape)
        request = pb.ModelInferRequest(
            model_name=name, inputs=[tensor], raw_input_contents=[x.tobytes()]
        )
        with grpc.insecure_channel(server.grpc_target) as channel:
            reply, call = GRPCInferenceServiceStub(channel).ModelInfer.with_call(
                request, timeout=30
            )
        y = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(1, 3)
        return y, dict(call.trailing_metadata() or ())

    # FITS + 1 distinct models in a row: the first is certainly cold again at the end
    for name in [*MODELS[-FITS - 1 :], MODELS[-FITS - 1]]:
        infer(name)
    y, trailer = infer(MODELS[0])
    np.testing.assert_allclose(y, x @ weights(MODELS[0]), rtol=1e-5)
    assert float(trailer["torchferry-cold-load"]) > 0
    _, warm = infer(MODELS[0])
    assert "torchferry-cold-load" not in warm


def test_loads_evictions_and_cold_requests_are_logged(budget_server):
    server, _ = budget_server
    log: Path | None = server.log
    assert log is not None
    wanted = ("m00' version 1 resident in", "m00' version 1 evicted", "m00:1 rows=2 batch=2")
    deadline = time.monotonic() + 10  # the workers' lines reach the file through a pipe
    while not all(line in (text := log.read_text()) for line in wanted):
        assert time.monotonic() < deadline, [line for line in wanted if line not in text]
        time.sleep(0.1)
    assert " cold_load=" in text  # the access log
