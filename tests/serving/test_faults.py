"""One fault, one class of answer, on every protocol: a table of (fault x protocol) sent to a
real server on real ports, checking the HTTP status or gRPC code each protocol gives.

The server runs in this process (uvicorn in a thread, gRPC on its loop) so that the test
can put one model version into the draining state, which no request can cause: a drained
version answers "not ready" (503 / UNAVAILABLE) until it is gone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import httpx
import numpy as np
import orjson
import pytest

from torchferry.serving.app import build_app
from torchferry.serving.loading import load_repository
from torchferry.serving.process import free_ports, serve_in_thread
from torchferry.serving.protos import inference_pb2 as pb
from torchferry.serving.protos.inference_pb2_grpc import GRPCInferenceServiceStub
from torchferry.serving.settings import ModelOverride, ServerSettings

#: Seconds before 504; ``batchy`` waits far longer than this to fill a batch. Long enough
#: for a second request to arrive while the first one waits, on a loaded machine.
TIMEOUT_S = 1.5


@dataclass
class Server:
    url: str
    grpc_target: str
    loop: asyncio.AbstractEventLoop
    app: object


@pytest.fixture(scope="module")
def server(model_store) -> Iterator[Server]:
    http_port, grpc_port = free_ports(2)
    settings = ServerSettings(
        store=model_store.root,
        models=["adder", "faulty", "batchy"],
        port=http_port,
        grpc_port=grpc_port,
        threads=1,
        max_queue_rows=1,
        request_timeout_s=TIMEOUT_S,
        per_model={"batchy": ModelOverride(max_batch_size=64, max_delay_ms=60_000)},
        log_level="warning",
    )
    app = build_app(settings, load_repository(settings))
    with serve_in_thread(app, http_port) as loop:
        # adder version 1 drains, as a version does while it is unloaded: it is "not ready"
        adder_v1 = app.state.repository.get("adder", 1)
        asyncio.run_coroutine_threadsafe(adder_v1.batcher.close(), loop).result(10)
        yield Server(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", loop, app)


# -- how each protocol sends x to model m (version v) and reports the outcome -------------------

Outcome = tuple[str, str | None]  # (status or code, retry-after)
Send = Callable[[Server, str, str | None, np.ndarray], Outcome]


def _http(url: str, **kwargs: object) -> Outcome:
    answer = httpx.post(url, timeout=30, **kwargs)  # type: ignore[arg-type]
    return str(answer.status_code), answer.headers.get("retry-after")


def _versioned(server: Server, prefix: str, m: str, v: str | None, sep: str, suffix: str) -> str:
    return f"{server.url}{prefix}{m}{sep + v if v else ''}{suffix}"


def v2_json(server: Server, m: str, v: str | None, x: np.ndarray) -> Outcome:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x}]}
    url = _versioned(server, "/v2/models/", m, v, "/versions/", "/infer")
    return _http(url, content=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))


def v2_binary(server: Server, m: str, v: str | None, x: np.ndarray) -> Outcome:
    raw = x.astype("<f4").tobytes()
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32"}
    header = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]})
    url = _versioned(server, "/v2/models/", m, v, "/versions/", "/infer")
    headers = {"Inference-Header-Content-Length": str(len(header))}
    return _http(url, content=header + raw, headers=headers)


def v2_grpc(server: Server, m: str, v: str | None, x: np.ndarray) -> Outcome:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=x.shape)
    request = pb.ModelInferRequest(
        model_name=m, model_version=v or "", inputs=[tensor], raw_input_contents=[x.tobytes()]
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        try:
            GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        except grpc.RpcError as exc:
            trailing = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
            return exc.code().name, trailing.get("retry-after")  # type: ignore[attr-defined]
    return "OK", None


def v1(server: Server, m: str, v: str | None, x: np.ndarray) -> Outcome:
    url = _versioned(server, "/v1/models/", m, v, "/versions/", ":predict")
    return _http(url, content=orjson.dumps({"instances": x.tolist()}))


def predict(server: Server, m: str, v: str | None, x: np.ndarray) -> Outcome:
    url = _versioned(server, "/predict/", m, v, "/versions/", "")
    return _http(url, json={"data": x.tolist()})


def torchserve(server: Server, m: str, v: str | None, x: np.ndarray) -> Outcome:
    url = _versioned(server, "/predictions/", m, v, "/", "")
    return _http(url, json=x.tolist())


PROTOCOLS: dict[str, Send] = {
    "v2-json": v2_json,
    "v2-binary": v2_binary,
    "v2-grpc": v2_grpc,
    "v1": v1,
    "predict": predict,
    "torchserve": torchserve,
}
ROW4 = np.ones((1, 4), np.float32)


def _overload(server: Server, send: Send) -> Outcome:
    """One request waits in batchy's queue (it holds the one row allowed); the next one is
    refused while it waits."""
    batcher = server.app.state.repository.get("batchy").batcher  # type: ignore[attr-defined]
    with ThreadPoolExecutor(1) as pool:
        blocker = pool.submit(send, server, "batchy", None, ROW4)
        waited = time.monotonic() + 10
        while batcher.queued_rows < 1 and time.monotonic() < waited:
            time.sleep(0.005)  # until the blocker holds the queue's one row
        outcome = send(server, "batchy", None, ROW4)
        assert blocker.result()[0] in ("504", "DEADLINE_EXCEEDED")
    return outcome


#: fault -> how to cause it, the HTTP status, the gRPC code, whether Retry-After comes back
FAULTS: dict[str, tuple[Callable[[Server, Send], Outcome], str, str, bool]] = {
    "client fault": (
        lambda s, send: send(s, "adder", None, np.ones((1, 3), np.float32)),
        "400", "INVALID_ARGUMENT", False,
    ),
    "unknown model": (lambda s, send: send(s, "nope", None, ROW4), "404", "NOT_FOUND", False),
    "unknown version": (lambda s, send: send(s, "adder", "9", ROW4), "404", "NOT_FOUND", False),
    "overload": (_overload, "503", "RESOURCE_EXHAUSTED", True),
    "not ready": (lambda s, send: send(s, "adder", "1", ROW4), "503", "UNAVAILABLE", True),
    "timeout": (lambda s, send: send(s, "batchy", None, ROW4), "504", "DEADLINE_EXCEEDED", False),
    "model failure": (
        lambda s, send: send(s, "faulty", None, -np.ones((1, 2), np.float32)),
        "500", "INTERNAL", False,
    ),
}  # fmt: skip


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_gets_its_class_on_every_protocol(server, fault, protocol):
    cause, status, code, retry = FAULTS[fault]
    outcome, retry_after = cause(server, PROTOCOLS[protocol])
    assert outcome == (code if protocol == "v2-grpc" else status), (fault, protocol)
    assert (retry_after is not None) == retry, (fault, protocol, retry_after)
    if retry:
        assert int(retry_after) >= 1


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_the_server_keeps_serving_after_every_fault(server, protocol):
    assert PROTOCOLS[protocol](server, "adder", None, ROW4)[0] in ("200", "OK")
