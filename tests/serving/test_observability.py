"""Request records, Prometheus metrics and the access log, end to end: a real server on real
ports (uvicorn in a thread, gRPC on its loop, metrics in this process's default registry),
requests over HTTP and gRPC, and what the records, the ``/metrics`` page and the access log
say about them.

The metrics are this process's, shared with every other in-process server of the test run,
so each test compares a scrape after its requests with one before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import httpx
import numpy as np
import orjson
import pytest

from torchferry.serving import metrics
from torchferry.serving.app import build_app
from torchferry.serving.loading import load_repository
from torchferry.serving.metrics_render import parse_metrics, render_metrics, sample_value
from torchferry.serving.observe import RequestRecord
from torchferry.serving.observe_http import RecordRequests, protocol_of
from torchferry.serving.process import free_ports, serve_in_thread
from torchferry.serving.protos import inference_pb2 as pb
from torchferry.serving.protos.inference_pb2_grpc import GRPCInferenceServiceStub
from torchferry.serving.settings import ModelOverride, ServerSettings

#: batchy runs a batch only when it holds this many rows (its delay is a minute)
BATCH_ROWS = 8


@dataclass
class Server:
    url: str
    grpc_target: str
    app: RecordRequests
    records: list[RequestRecord]

    def record(self, request_id: str) -> RequestRecord:
        """The finished record of a request (finish runs just after the answer is sent)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = [r for r in self.records if r.request_id == request_id]
            if found:
                return found[-1]
            time.sleep(0.01)
        raise AssertionError(f"no record of request {request_id!r}")


@pytest.fixture(scope="module")
def server(model_store) -> Iterator[Server]:
    http_port, grpc_port = free_ports(2)
    settings = ServerSettings(
        store=model_store.root,
        models=["adder", "faulty", "batchy"],
        port=http_port,
        grpc_port=grpc_port,
        threads=1,
        per_model={"batchy": ModelOverride(max_batch_size=BATCH_ROWS, max_delay_ms=60_000)},
        log_level="warning",
    )
    app = build_app(settings, load_repository(settings))
    records: list[RequestRecord] = []
    app.observers.observers.append(records.append)
    with serve_in_thread(app, http_port):
        yield Server(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", app, records)


def v2_body(x: np.ndarray, **extra: object) -> bytes:
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return orjson.dumps({"inputs": [tensor], **extra})


def grpc_infer(
    server: Server, model: str, x: np.ndarray, metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[str, dict[str, str]]:
    """(status code name, trailing metadata) of one ModelInfer call."""
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=x.shape)
    request = pb.ModelInferRequest(
        model_name=model, inputs=[tensor], raw_input_contents=[x.astype("<f4").tobytes()]
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        try:
            _, call = stub.ModelInfer.with_call(request, metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            trailing = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
            return exc.code().name, trailing  # type: ignore[attr-defined]
        return "OK", dict(call.trailing_metadata() or ())


def post(server: Server, path: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=body, headers=headers, timeout=30)


# -- records ----------------------------------------------------------------------------------


def test_an_http_inference_is_recorded_once_with_every_mark(server):
    x = np.ones((3, 4), np.float32)
    answer = post(server, "/v2/models/adder/infer", v2_body(x), **{"X-Request-ID": "client-1"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-request-id"] == "client-1"
    record = server.record("client-1")
    assert [r.request_id for r in server.records].count("client-1") == 1
    assert (record.protocol, record.method, record.route) == (
        "v2",
        "POST",
        "/v2/models/{model_name}/infer",
    )
    assert (record.model, record.version, record.status, record.success) == (
        "adder",
        "2",
        "200",
        True,
    )
    assert (record.rows, record.batch_size) == (3, 3)
    marks = [
        record.started, record.decoded, record.queued, record.compute_started,
        record.compute_ended, record.ended,
    ]  # fmt: skip
    assert all(m is not None for m in marks) and marks == sorted(marks), marks  # type: ignore[type-var]


def test_a_v2_id_names_the_request_unless_the_client_sent_one(server):
    x = np.ones((1, 4), np.float32)
    answer = post(server, "/v2/models/adder/infer", v2_body(x, id="body-id-7"))
    assert answer.json()["id"] == "body-id-7"
    assert answer.headers["x-request-id"] == "body-id-7"
    assert server.record("body-id-7").model == "adder"
    both = post(
        server, "/v2/models/adder/infer", v2_body(x, id="body-id-8"), **{"X-Request-ID": "hdr-8"}
    )
    assert both.headers["x-request-id"] == "hdr-8" and both.json()["id"] == "body-id-8"
    # an id that cannot go back in a header, or into a log line, is replaced
    bad = post(server, "/v2/models/adder/infer", v2_body(x), **{"X-Request-ID": "x" * 200})
    made = bad.headers["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0
    spaced = post(server, "/v2/models/adder/infer", v2_body(x, id="has a space"))
    assert spaced.headers["x-request-id"] != "has a space"


def test_routes_are_templates_and_unmatched_paths_are_not_kept(server):
    ready = httpx.get(f"{server.url}/v2/health/ready", headers={"X-Request-ID": "ready-1"})
    assert ready.status_code == 200 and ready.headers["x-request-id"] == "ready-1"
    record = server.record("ready-1")
    assert (record.protocol, record.route, record.model, record.status) == (
        "v2", "/v2/health/ready", None, "200",
    )  # fmt: skip
    missing = httpx.get(f"{server.url}/no/such/path?secret=1", headers={"X-Request-ID": "nope-1"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "nope-1"
    record = server.record("nope-1")
    assert (record.protocol, record.route, record.status) == ("http", "unmatched", "404")
    unknown = post(
        server,
        "/v2/models/nope/infer",
        v2_body(np.ones((1, 4), np.float32)),
        **{"X-Request-ID": "nope-2"},
    )
    assert unknown.status_code == 404
    assert server.record("nope-2").model is None  # not an inference of any model


def test_payload_routes_and_failures_are_recorded(server):
    x = [[1.0, 2.0, 3.0, 4.0]]
    ts = httpx.post(f"{server.url}/predictions/adder/1", json=x, headers={"X-Request-ID": "ts-1"})
    assert ts.status_code == 200, ts.text
    record = server.record("ts-1")
    assert (record.protocol, record.route, record.model, record.version) == (
        "torchserve", "/predictions/{model_name}/{model_version}", "adder", "1",
    )  # fmt: skip
    assert record.success and record.batch_size == 1
    bad = post(
        server,
        "/v2/models/faulty/infer",
        v2_body(-np.ones((1, 2), np.float32)),
        **{"X-Request-ID": "fail-1"},
    )
    assert bad.status_code == 500
    record = server.record("fail-1")
    assert (record.model, record.status, record.success) == ("faulty", "500", False)
    assert record.compute_started is not None  # it reached the model, which raised


def test_a_grpc_call_is_recorded_and_its_id_echoed(server):
    x = np.ones((2, 4), np.float32)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    code, trailing = grpc_infer(
        server, "adder", x, (("x-request-id", "grpc-1"), ("traceparent", traceparent))
    )
    assert code == "OK" and trailing["x-request-id"] == "grpc-1"
    record = server.record("grpc-1")
    assert (record.protocol, record.route, record.status, record.method) == (
        "v2-grpc", "ModelInfer", "OK", "",
    )  # fmt: skip
    assert (record.model, record.rows, record.traceparent) == ("adder", 2, traceparent)
    code, trailing = grpc_infer(server, "faulty", -np.ones((1, 2), np.float32))
    assert code == "INTERNAL"
    assert server.record(trailing["x-request-id"]).status == "INTERNAL"


def test_protocols_by_route_template():
    assert protocol_of("/v2") == protocol_of("/v2/models/{model_name}/infer") == "v2"
    assert protocol_of("/v1/models/{model_name}:predict") == "v1"
    assert protocol_of("/predict/{model_name}") == protocol_of("/predict") == "predict"
    assert protocol_of("/predictions/{model_name}") == "torchserve"
    assert protocol_of("/ping") == protocol_of("/models/{model_name}") == "torchserve"
    assert protocol_of("/docs") == protocol_of("/v2x") == "http"


# -- metrics ----------------------------------------------------------------------------------


def scrape() -> list:
    metrics.flush()
    return parse_metrics(render_metrics(None)[0].decode())


def settled(read: Callable[[], float], expected: float) -> float:
    """``read()`` once it reaches ``expected`` (records finish just after their answer),
    checked again a flush interval later: the counters must stop there, not pass it."""
    deadline = time.monotonic() + 10
    while read() < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(2 * metrics.FLUSH_INTERVAL_S)
    return read()


def test_triton_counters_add_up_over_http_and_grpc(server):
    def value(name: str, model: str, version: str) -> float:
        return sample_value(scrape(), name, model=model, version=version)

    names = [
        "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
        "nv_inference_exec_count", "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
        "torchferry_batch_size_count", "torchferry_batch_size_sum",
        "torchferry_queue_duration_seconds_count",
    ]  # fmt: skip
    samples = scrape()
    before = {
        (n, m): sample_value(samples, n, model=m)
        for n in names
        for m in ("batchy", "adder", "faulty")
    }

    # four requests of two rows, half over gRPC: batchy runs them as one batch of eight
    x = np.ones((2, 4), np.float32)
    with ThreadPoolExecutor(4) as pool:
        sent = [
            pool.submit(post, server, "/v2/models/batchy/infer", v2_body(x)),
            pool.submit(post, server, "/v2/models/batchy/infer", v2_body(x)),
            pool.submit(grpc_infer, server, "batchy", x),
            pool.submit(grpc_infer, server, "batchy", x),
        ]
        results = [f.result() for f in sent]
    assert [r.status_code for r in results[:2]] == [200, 200] and [r[0] for r in results[2:]] == [
        "OK",
        "OK",
    ]
    # failures: a model error on each protocol, a bad shape (it reached the data plane)
    assert (
        post(server, "/v2/models/faulty/infer", v2_body(-np.ones((1, 2), np.float32))).status_code
        == 500
    )
    assert grpc_infer(server, "faulty", -np.ones((1, 2), np.float32))[0] == "INTERNAL"
    assert (
        post(server, "/v2/models/adder/infer", v2_body(np.ones((1, 3), np.float32))).status_code
        == 400
    )
    # counted nowhere: an unknown model
    assert post(server, "/v2/models/nope/infer", v2_body(x)).status_code == 404

    def delta(name: str, model: str) -> float:
        return sample_value(scrape(), name, model=model) - before[name, model]

    assert settled(lambda: delta("nv_inference_request_success", "batchy"), 4) == 4
    assert delta("nv_inference_count", "batchy") == 8
    assert delta("nv_inference_exec_count", "batchy") == 1
    assert delta("nv_inference_request_failure", "batchy") == 0
    assert delta("torchferry_batch_size_count", "batchy") == 1
    assert delta("torchferry_batch_size_sum", "batchy") == 8
    assert delta("torchferry_queue_duration_seconds_count", "batchy") == 4
    for name in (
        "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
    ):  # fmt: skip
        assert delta(name, "batchy") > 0, name
    # the requests waited for each other: their queue time is most of their time
    assert delta("nv_inference_queue_duration_us", "batchy") < delta(
        "nv_inference_request_duration_us", "batchy"
    )
    assert settled(lambda: delta("nv_inference_request_failure", "faulty"), 2) == 2
    assert delta("nv_inference_request_success", "faulty") == 0
    assert delta("nv_inference_count", "faulty") == 0
    assert settled(lambda: delta("nv_inference_request_failure", "adder"), 1) == 1
    assert all(s.labels.get("model") != "nope" for s in scrape())
    assert value("nv_inference_pending_request_count", "batchy", "1") == 0


def test_every_request_has_a_latency_by_protocol_and_status(server):
    def count(**labels: str) -> float:
        return sample_value(scrape(), "torchferry_request_duration_seconds_count", **labels)

    ready = count(protocol="v2", model="", status="200")
    grpc_ok = count(protocol="v2-grpc", model="adder", status="OK")
    for _ in range(3):
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert grpc_infer(server, "adder", np.ones((1, 4), np.float32))[0] == "OK"
    assert settled(lambda: count(protocol="v2", model="", status="200") - ready, 3) == 3
    assert count(protocol="v2-grpc", model="adder", status="OK") - grpc_ok == 1


def test_the_page_keeps_triton_names_and_help(server):
    assert (
        post(server, "/v2/models/adder/infer", v2_body(np.ones((1, 4), np.float32))).status_code
        == 200
    )
    page = settled(
        lambda: float("nv_inference_request_success{" in render_metrics(None)[0].decode()), 1
    )
    assert page
    text = render_metrics(None)[0].decode()
    assert "# TYPE nv_inference_request_success counter" in text
    assert (
        "# HELP nv_inference_count Number of inferences performed (does not include cached requests)"
        in text
    )
    assert "nv_inference_request_success_total" not in text and "_created" not in text
    assert "# TYPE nv_inference_pending_request_count gauge" in text
    assert "# TYPE torchferry_request_duration_seconds histogram" in text


# -- the access log ---------------------------------------------------------------------------


def test_one_access_line_per_request_without_payload_values(server, caplog):
    caplog.set_level(logging.INFO, logger="torchferry.access")
    secret = 123.456789
    x = np.full((1, 4), secret, np.float32)
    answer = post(
        server, "/v2/models/adder/infer?token=abc", v2_body(x), **{"X-Request-ID": "log-1"}
    )
    assert answer.status_code == 200
    server.record("log-1")
    deadline = time.monotonic() + 5
    lines: list[logging.LogRecord] = []
    while not lines and time.monotonic() < deadline:
        lines = [r for r in caplog.records if getattr(r, "request_id", None) == "log-1"]
        time.sleep(0.01)
    assert len(lines) == 1
    line = lines[0]
    assert line.name == "torchferry.access" and line.levelno == logging.INFO
    fields = {
        k: getattr(line, k)
        for k in ("protocol", "method", "route", "status", "model", "version", "rows", "batch_size")
    }
    assert fields == {
        "protocol": "v2", "method": "POST", "route": "/v2/models/{model_name}/infer",
        "status": "200", "model": "adder", "version": "2", "rows": 1, "batch_size": 1,
    }  # fmt: skip
    assert line.latency_ms > 0  # type: ignore[attr-defined]
    text = line.getMessage() + repr(line.__dict__)
    assert "123.45" not in text and "token" not in text
    assert "log-1" in line.getMessage()
