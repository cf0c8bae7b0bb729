"""Adaptive batching served: priorities over HTTP and gRPC, shedding (503 with its reason,
``torchferry_shed_total``) and ``--shed never``, and two instances computing at once.

The model sleeps (an eager model under ``--trust-code``): a batch costs a fixed 25 ms
whatever the machine's load, so that queues, predictions and overlaps are deterministic."""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from safetensors.torch import save_file
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import torchferry.cli as cli
from torchferry.archive import Manifest, ModelStore
from torchferry.cli.serve_cmd import settings_from_args
from torchferry.serving.app import build_app
from torchferry.serving.process import ServerProcess
from torchferry.serving.repository import ModelRepository
from torchferry.signature import ModelSignature, TensorSpec

SOURCE = """
import sys
import threading
import time
import types

import torch
from torch import nn

# each instance loads this file as a module of its own: the count lives in one shared place
SHARED = sys.modules.setdefault("sleepy_shared", types.ModuleType("sleepy_shared"))
if not hasattr(SHARED, "lock"):
    SHARED.lock, SHARED.running = threading.Lock(), 0


class Sleepy(nn.Module):
    \"\"\"2x, and how many batches were computing (this one included) when it began.\"\"\"

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with SHARED.lock:
            SHARED.running += 1
            running = SHARED.running
        time.sleep(0.025)
        with SHARED.lock:
            SHARED.running -= 1
        return x * self.scale, torch.full((x.shape[0],), running, dtype=torch.int64)


def make() -> nn.Module:
    return Sleepy()
"""


def write_sleepy(store: ModelStore, name: str) -> None:
    """The eager archive, written directly (an export would cost seconds of tracing)."""
    spec = TensorSpec(name="x", datatype="FP32", shape=(-1, 4))
    running = TensorSpec(name="running", datatype="INT64", shape=(-1,))
    manifest = Manifest(
        name=name,
        version=1,
        runtime="eager",
        graphs={"eager": "weights.safetensors"},
        signature=ModelSignature(inputs=(spec,), outputs=(spec, running)),
        factory="code/sleepy.py:make",
        source="tests",
    )

    def populate(directory: Path) -> None:
        (directory / "code").mkdir()
        (directory / "code" / "sleepy.py").write_text(SOURCE)
        save_file({"scale": torch.tensor(2.0)}, str(directory / "weights.safetensors"))

    store.write(manifest, populate)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = ModelStore(tmp_path_factory.mktemp("store"))
    for name in ("sleepy", "tight"):
        write_sleepy(store, name)
    return store.root


def serve_args(store: Path, *extra: str) -> list[str]:
    return [
        "--store", str(store), "--runtime", "eager", "--trust-code", "--threads", "1",
        "--log-level", "warning", "--no-management",
        # sleepy: one row a batch on 2 instances; tight: an objective no batch can meet
        "--batching", "sleepy:max_batch_size=1,instances=2",
        "--batching", "tight:max_latency_ms=1", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def server(store, start_server, tmp_path_factory) -> ServerProcess:
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with start_server(serve_args(store), log) as server:
        yield server


def body(value: float, priority: int | None = None, timeout_us: int | None = None) -> dict:
    parameters = {}
    if priority is not None:
        parameters["priority"] = priority
    if timeout_us is not None:
        parameters["timeout"] = timeout_us
    x = [[value] * 4]
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x}
    return {"inputs": [tensor], "parameters": parameters}


async def answered_order(url: str, bodies: list[tuple[float, dict]]) -> list[float]:
    """Post each body after its delay; the values of the answers, in the order they came."""
    order: list[float] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def post(delay: float, payload: dict) -> None:
            await asyncio.sleep(delay)
            answer = await client.post("/v2/models/sleepy/infer", json=payload)
            assert answer.status_code == 200, answer.text
            [output] = [o for o in answer.json()["outputs"] if o["name"] == "x"]
            order.append(output["data"][0] / 2)

        await asyncio.gather(*(post(delay, payload) for delay, payload in bodies))
    return order


def test_a_high_priority_request_is_answered_before_a_queue_of_low_ones(server):
    lows = [(0.0, body(i, priority=200)) for i in range(16)]
    order = asyncio.run(answered_order(server.url, [*lows, (0.06, body(99, priority=1))]))
    # 16 low rows need 8 rounds of 2 instances (200 ms); the high one comes at 60 ms
    assert order.index(99) <= 8, order


def test_priority_over_grpc_and_a_bad_priority_is_refused(server):
    triton = grpcclient.InferenceServerClient(server.grpc_target)

    def infer(value: float, priority: int) -> float:
        """When the answer came (it is checked too)."""
        tensor = grpcclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
        result = triton.infer("sleepy", [tensor], priority=priority)
        assert result.as_numpy("x")[0, 0] == 2 * value
        return time.perf_counter()

    with ThreadPoolExecutor(20) as pool:
        lows = [pool.submit(infer, i, 200) for i in range(16)]
        time.sleep(0.06)
        high = pool.submit(infer, 99, 1)
        high_done = high.result()
        low_done = sorted(f.result() for f in lows)
    assert sum(done < high_done for done in low_done) <= 10, (high_done, low_done)

    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    # tritonclient reserves its own "priority" parameter: a raw message carries a bad one
    request = service_pb2.ModelInferRequest(model_name="sleepy")
    request.parameters["priority"].string_param = "high"
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameters.priority" in refused.value.details()
    triton.close()


def test_a_bad_priority_is_a_400_naming_it(server):
    with server.client() as http:
        answer = http.post("/v2/models/sleepy/infer", json=body(1, priority=-1))
    assert answer.status_code == 400 and "parameters.priority" in answer.json()["error"]


def shed_count(server: ServerProcess, model: str, reason: str) -> float:
    text = httpx.get(server.metrics_url, timeout=5).text
    prefix = f'torchferry_shed_total{{model="{model}",reason="{reason}",version="1"}}'
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


async def warm_then_burst(client: httpx.AsyncClient, burst: int) -> list[httpx.Response]:
    """4 lone requests (they teach the cost: 25 ms a batch), then ``burst`` at once, then
    one more alone: every answer, in that order."""
    url = "/v2/models/tight/infer"
    warm = [await client.post(url, json=body(1)) for _ in range(4)]
    together = await asyncio.gather(*(client.post(url, json=body(1)) for _ in range(burst)))
    return [*warm, *together, await client.post(url, json=body(1))]


def test_a_request_that_would_miss_the_objective_is_shed_with_503(server):
    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await warm_then_burst(client, 6)

    answers = asyncio.run(scenario())
    assert [a.status_code for a in answers[:4]] == [200] * 4
    # behind a batch of 25 ms nothing can make 1 ms; a lone request on an idle model runs
    # (it refreshes the estimate), however far the estimate is past the objective
    assert answers[-1].status_code == 200
    shed = next(a for a in answers[4:-1] if a.status_code == 503)
    assert "Retry-After" in shed.headers
    message = shed.json()["error"]
    assert "'tight:1'" in message and "latency objective of 1.0 ms" in message
    deadline = time.monotonic() + 5
    while shed_count(server, "tight", "objective") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert shed_count(server, "tight", "objective") >= 2


def test_a_request_behind_a_long_queue_is_shed_by_its_own_timeout(server):
    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            # a second of work (40 rows, 25 ms each on 2 instances): long after the requests
            # reached the queue, even on a loaded machine, most of them still wait
            queue = [client.post("/v2/models/sleepy/infer", json=body(i)) for i in range(40)]
            queued = asyncio.gather(*queue)
            await asyncio.sleep(0.15)
            late = await client.post("/v2/models/sleepy/infer", json=body(1, timeout_us=50_000))
            await queued
            return late

    late = asyncio.run(scenario())
    assert late.status_code == 503, late.text
    assert re.search(
        r"predicted wait \d+\.\d ms exceeds its deadline of (49|50)\.\d ms", late.json()["error"]
    )


def test_two_instances_compute_batches_at_once(server):
    """The model counts the batches computing when each began: two instances, two."""

    async def scenario() -> list[int]:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            answers = await asyncio.gather(
                *(client.post("/v2/models/sleepy/infer", json=body(i)) for i in range(16))
            )
        running = []
        for i, answer in enumerate(answers):
            assert answer.status_code == 200, answer.text
            outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
            assert outputs["x"] == [2.0 * i] * 4
            running.extend(outputs["running"])
        return running

    assert max(asyncio.run(scenario())) == 2


def test_shed_never_runs_what_would_miss_the_objective(store):
    """In this process, through the app (a second server process would cost seconds): the
    settings ``--shed never`` makes, the same repository and routes."""
    args = serve_args(store, "--shed", "never")
    parsed = cli.build_parser().parse_args(["serve", *args])
    settings = settings_from_args(parsed).model_copy(update={"models": ["tight"]})
    assert settings.shed == "never"
    repository = ModelRepository(settings)
    repository.load_store(ModelStore(store), ["tight"])

    async def scenario() -> list[int]:
        await repository.start()
        transport = httpx.ASGITransport(app=build_app(settings, repository))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                return [a.status_code for a in await warm_then_burst(client, 4)]
        finally:
            await repository.close()

    assert asyncio.run(scenario()) == [200] * 9


def test_a_grpc_deadline_that_cannot_be_met_behind_a_queue_is_shed(server):
    triton = grpcclient.InferenceServerClient(server.grpc_target)

    def infer(timeout: float | None = None) -> None:
        tensor = grpcclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        triton.infer("sleepy", [tensor], client_timeout=timeout)

    with ThreadPoolExecutor(32) as pool:
        queue = [pool.submit(infer) for _ in range(32)]  # 16 rounds of 25 ms
        time.sleep(0.15)
        with pytest.raises(InferenceServerException) as shed:
            infer(timeout=0.08)
        for queued in queue:
            queued.result()
    triton.close()
    assert shed.value.status() == "StatusCode.RESOURCE_EXHAUSTED", shed.value
    assert "exceeds its deadline" in shed.value.message()
