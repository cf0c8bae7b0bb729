"""OpenTelemetry traces from finished request records (``torchferry.serving.tracing``).

Spans are checked from records built here (names, kinds, parents, timestamps, attributes,
error status, the client's trace context), then from real requests to a server: in this
process with an in-memory exporter, and ``torchferry serve --otel`` with the console
exporter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest

from torchferry.serving.observe import Observers, RequestRecord
from torchferry.serving.process import free_ports, serve_in_subprocess, serve_in_thread
from torchferry.serving.settings import ServerSettings
from torchferry.serving.tracing import (
    TracingObserver,
    TracingUnavailable,
    exporters_from_env,
    tracing_observer,
)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
INFER_ROUTE = "/v2/models/{model_name}/infer"
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
#: Marks of a whole request, in seconds after ``started``.
MARKS = {"decoded": 0.001, "queued": 0.0015, "compute_started": 0.004, "compute_ended": 0.007}
ENDED = 0.009
WALL_NS = 1_750_000_000_000_000_000
#: The OTEL_* variables a test's outcome depends on; each test starts without them.
OTEL_VARIABLES = [
    "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_BSP_SCHEDULE_DELAY",
]  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def exporter():
    memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    return memory.InMemorySpanExporter()


@pytest.fixture
def observer(exporter) -> Iterator[TracingObserver]:
    traced = tracing_observer(True, exporters=[exporter])
    assert traced is not None
    yield traced
    traced.shutdown()


def finished(observer: TracingObserver, exporter: Any) -> dict[str, Any]:
    """The spans exported so far, by name."""
    observer.provider.force_flush()
    return {span.name: span for span in exporter.get_finished_spans()}


def record(
    protocol: str = "v2",
    route: str = INFER_ROUTE,
    method: str | None = "POST",
    status: str = "200",
    marks: dict[str, float] | None = None,
    **fields: Any,
) -> RequestRecord:
    """A finished record: started at perf_counter 100.0, ``marks`` after it, ended at +9 ms."""
    started = 100.0
    built = RequestRecord(
        request_id="req-1",
        protocol=protocol,
        route=route,
        method=method,
        started=started,
        wall_ns=WALL_NS,
        status=status,
        ended=started + ENDED,
        **fields,
    )
    for name, after in (MARKS if marks is None else marks).items():
        setattr(built, name, started + after)
    return built


def at(after_s: float) -> int:
    return WALL_NS + round(after_s * 1e9)


# -- spans from a record --------------------------------------------------------------------------


def test_a_request_is_a_server_span_with_a_child_per_phase(observer, exporter):
    from opentelemetry.trace import SpanKind, StatusCode

    observer(record(model="adder", version="2", rows=3, batch_size=8, success=True))
    spans = finished(observer, exporter)
    assert set(spans) == {"POST " + INFER_ROUTE, "decode", "queue", "compute", "encode"}
    server = spans["POST " + INFER_ROUTE]
    assert server.kind is SpanKind.SERVER
    assert server.parent is None  # no traceparent: a new trace
    assert server.status.status_code is StatusCode.UNSET
    phases = {
        "decode": (0, MARKS["decoded"]),
        "queue": (MARKS["queued"], MARKS["compute_started"]),
        "compute": (MARKS["compute_started"], MARKS["compute_ended"]),
        "encode": (MARKS["compute_ended"], ENDED),
    }
    for name, (begin, end) in phases.items():
        span = spans[name]
        assert span.kind is SpanKind.INTERNAL
        assert span.parent.span_id == server.context.span_id, name
        assert span.context.trace_id == server.context.trace_id, name
        # nanoseconds from float seconds: within a microsecond of the marks
        assert abs(span.start_time - at(begin)) < 1_000, name
        assert abs(span.end_time - at(end)) < 1_000, name
    assert server.start_time == WALL_NS
    assert abs(server.end_time - at(ENDED)) < 1_000
    assert dict(server.attributes) == {
        "torchferry.request_id": "req-1",
        "torchferry.protocol": "v2",
        "torchferry.status": "200",
        "torchferry.success": True,
        "torchferry.model.name": "adder",
        "torchferry.model.version": "2",
        "torchferry.rows": 3,
        "torchferry.batch_size": 8,
        "http.route": INFER_ROUTE,
        "http.request.method": "POST",
        "http.response.status_code": 200,
    }
    assert server.resource.attributes["service.name"] == "torchferry"


def test_only_phases_with_both_marks_become_spans(observer, exporter):
    # refused before it was queued (an unknown model): decoded, never queued or computed
    observer(record(status="404", marks={"decoded": 0.001}))
    assert set(finished(observer, exporter)) == {"POST " + INFER_ROUTE, "decode"}


def test_a_route_without_a_method_is_named_by_its_route(observer, exporter):
    observer(record(route="/v2/health/ready", method=None, marks={}))
    assert set(finished(observer, exporter)) == {"/v2/health/ready"}


def test_a_grpc_call_is_named_by_its_method_with_rpc_attributes(observer, exporter):
    observer(record(protocol="v2-grpc", route=GRPC_INFER, method=None, status="NOT_FOUND"))
    server = finished(observer, exporter)["inference.GRPCInferenceService/ModelInfer"]
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.service"] == "inference.GRPCInferenceService"
    assert server.attributes["rpc.method"] == "ModelInfer"
    assert server.attributes["rpc.grpc.status_code"] == 5
    assert "http.route" not in server.attributes


@pytest.mark.parametrize(
    ("protocol", "status", "error"),
    [
        ("v2", "200", False), ("v2", "400", False), ("v2", "404", False), ("v2", "413", False),
        ("v2", "500", True), ("v2", "503", True), ("v2", "504", True),
        ("v2-grpc", "OK", False), ("v2-grpc", "INVALID_ARGUMENT", False),
        ("v2-grpc", "NOT_FOUND", False), ("v2-grpc", "RESOURCE_EXHAUSTED", False),
        ("v2-grpc", "INTERNAL", True), ("v2-grpc", "UNAVAILABLE", True),
        ("v2-grpc", "DEADLINE_EXCEEDED", True), ("v2-grpc", "UNKNOWN", True),
    ],
)  # fmt: skip
def test_server_faults_and_only_they_mark_the_span_as_an_error(
    observer, exporter, protocol, status, error
):
    from opentelemetry.trace import SpanKind, StatusCode

    route = GRPC_INFER if protocol == "v2-grpc" else INFER_ROUTE
    observer(record(protocol=protocol, route=route, status=status))
    observer.provider.force_flush()
    (server,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    expected = StatusCode.ERROR if error else StatusCode.UNSET
    assert server.status.status_code is expected
    assert server.attributes.get("error.type") == (status if error else None)


# -- the client's trace context -------------------------------------------------------------------


def test_a_traceparent_makes_the_server_span_part_of_the_clients_trace(observer, exporter):
    observer(record(traceparent=TRACEPARENT, tracestate="vendor=opaque"))
    spans = finished(observer, exporter)
    server = spans["POST " + INFER_ROUTE]
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == PARENT_ID
    assert server.parent.is_remote
    assert server.context.trace_state.get("vendor") == "opaque"
    assert all(format(s.context.trace_id, "032x") == TRACE_ID for s in spans.values())


def test_a_client_that_does_not_sample_gets_no_spans(observer, exporter):
    # the default sampler follows the parent's sampled flag (the trailing 00)
    observer(record(traceparent=f"00-{TRACE_ID}-{PARENT_ID}-00"))
    assert finished(observer, exporter) == {}


def test_a_malformed_traceparent_starts_a_new_trace(observer, exporter):
    observer(record(traceparent="00-not-a-trace-01"))
    server = finished(observer, exporter)["POST " + INFER_ROUTE]
    assert server.parent is None
    assert server.context.trace_id != 0


# -- safety and cost ------------------------------------------------------------------------------


def test_a_broken_record_drops_its_spans_and_raises_nothing(observer, exporter, caplog):
    broken = record()
    broken.status = None  # type: ignore[assignment]
    observer(broken)
    observer(broken)
    assert finished(observer, exporter) == {}
    assert [r.message for r in caplog.records] == ["tracing: a request's spans were dropped"]


def test_spans_are_exported_off_the_request_thread(exporter, monkeypatch):
    from opentelemetry.sdk.trace.export import SpanExportResult

    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    threads: list[str] = []

    class Recording(type(exporter)):  # type: ignore[misc]
        def export(self, spans):
            threads.append(threading.current_thread().name)
            return SpanExportResult.SUCCESS

    traced = tracing_observer(True, exporters=[Recording()])
    assert traced is not None
    try:
        traced(record())
        deadline = time.monotonic() + 10
        while not threads and time.monotonic() < deadline:
            time.sleep(0.01)
        assert threads
        assert threading.current_thread().name not in threads
    finally:
        traced.shutdown()


# -- switched on and configured by the environment ------------------------------------------------


def test_off_unless_asked(monkeypatch):
    assert tracing_observer(False) is None
    assert tracing_observer(ServerSettings()) is None
    monkeypatch.setenv("OTEL_SERVICE_NAME", "ferry")  # names a service, asks for nothing
    assert tracing_observer(False) is None


@pytest.mark.parametrize(
    ("name", "value"), [("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_EXPORTER", "none")]
)
def test_the_sdks_off_switches_win_over_the_flag(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert tracing_observer(ServerSettings(otel=True)) is None


def test_an_exporter_named_in_the_environment_turns_tracing_on(monkeypatch):
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    (exporter,) = exporters_from_env()
    assert isinstance(exporter, ConsoleSpanExporter)
    traced = tracing_observer(False)
    assert traced is not None
    traced.shutdown()


def test_the_sdk_reads_service_name_and_sampler_from_the_environment(monkeypatch, exporter):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "ferry-test")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    traced = TracingObserver([exporter])
    try:
        assert traced.provider.resource.attributes["service.name"] == "ferry-test"
        traced(record())
        assert finished(traced, exporter) == {}
    finally:
        traced.shutdown()


@pytest.mark.parametrize(
    ("exporter_name", "protocol", "message"),
    [
        ("no_such_exporter", None, "no trace exporter 'no_such_exporter' is installed"),
        ("otlp", "http/json", "OTLP protocol 'http/json' is not supported"),
    ],
)
def test_an_exporter_that_cannot_be_had_fails_the_flag_and_warns_the_environment(
    monkeypatch, caplog, exporter_name, protocol, message
):
    pytest.importorskip("opentelemetry.sdk")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", exporter_name)
    if protocol:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    with pytest.raises(TracingUnavailable, match=message):
        tracing_observer(True)
    assert tracing_observer(False) is None
    assert message in caplog.text


def test_without_the_sdk_the_flag_says_which_extra_to_install(monkeypatch, caplog):
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(TracingUnavailable, match=r"pip install 'torchferry\[otel\]'"):
        tracing_observer(True)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    assert tracing_observer(False) is None
    assert "torchferry[otel]" in caplog.text


def test_the_module_imports_without_opentelemetry():
    script = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from torchferry.serving import tracing\n"
        "assert tracing.tracing_observer(False) is None\n"
        "try:\n"
        "    tracing.tracing_observer(True)\n"
        "except tracing.TracingUnavailable as exc:\n"
        "    print(exc.message)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'torchferry[otel]'" in done.stdout


# -- end to end -----------------------------------------------------------------------------------

NEEDS_WIRING = (
    "needs request records wired into the HTTP entry, the gRPC wrapper, the data plane and "
    "the batcher (build_app's app.state.observers); runs once they are merged"
)


def _records_are_wired() -> bool:
    """Whether build_app hands its app an ``Observers`` (an app over no models is cheap)."""
    from torchferry.serving.app import build_app
    from torchferry.serving.repository import ModelRepository

    settings = ServerSettings(grpc_port=None)
    app = build_app(settings, ModelRepository(settings))
    return isinstance(getattr(app.state, "observers", None), Observers)


@dataclass
class TracedServer:
    url: str
    grpc_target: str
    exporter: Any
    observer: TracingObserver


@pytest.fixture(scope="module")
def traced_server(request) -> Iterator[TracedServer]:
    memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    if not _records_are_wired():
        pytest.skip(NEEDS_WIRING)
    from torchferry.serving.app import build_app
    from torchferry.serving.loading import load_repository

    model_store = request.getfixturevalue("model_store")
    http_port, grpc_port = free_ports(2)
    settings = ServerSettings(
        store=model_store.root,
        models=["adder"],
        port=http_port,
        grpc_port=grpc_port,
        threads=1,
        log_level="warning",
    )
    app = build_app(settings, load_repository(settings))
    exporter = memory.InMemorySpanExporter()
    observer = TracingObserver([exporter])
    app.state.observers.observers.append(observer)
    with serve_in_thread(app, http_port):
        yield TracedServer(
            f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", exporter, observer
        )
    observer.shutdown()


def _server_span(server: TracedServer, trace_id: str) -> tuple[Any, dict[str, Any]]:
    """The server span of trace ``trace_id`` (one request each) and its children by name, once
    exported (an observer runs as the answer goes out, so it may trail the client a moment)."""
    from opentelemetry.trace import SpanKind

    deadline = time.monotonic() + 10
    while True:
        server.observer.provider.force_flush()
        spans = [
            s
            for s in server.exporter.get_finished_spans()
            if format(s.context.trace_id, "032x") == trace_id
        ]
        roots = [s for s in spans if s.kind is SpanKind.SERVER]
        if roots or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(roots) == 1, f"trace {trace_id}: {[s.name for s in spans]}"
    root = roots[0]
    children = {s.name: s for s in spans if s.parent and s.parent.span_id == root.context.span_id}
    return root, children


#: A value no span may carry: it is only ever inside the payload.
SECRET = 1234.5


def _no_payload(spans: list[Any]) -> None:
    for span in spans:
        assert "1234.5" not in span.to_json(), span.name


def test_an_http_infer_continues_the_clients_trace_through_every_phase(traced_server):
    trace_id = "1" * 32
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [SECRET] * 4}]}
    answer = httpx.post(
        f"{traced_server.url}/v2/models/adder/infer",
        content=orjson.dumps(body),
        headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01", "tracestate": "k=v"},
        timeout=30,
    )
    assert answer.status_code == 200
    root, children = _server_span(traced_server, trace_id)
    assert root.name == "POST " + INFER_ROUTE
    assert format(root.parent.span_id, "016x") == PARENT_ID
    assert root.attributes["torchferry.model.name"] == "adder"
    assert root.attributes["torchferry.model.version"] == "2"
    assert root.attributes["torchferry.rows"] == 1
    assert root.attributes["torchferry.batch_size"] >= 1
    assert root.attributes["http.response.status_code"] == 200
    assert {"decode", "queue", "compute", "encode"} <= set(children)
    for child in children.values():
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time
    _no_payload([root, *children.values()])


def test_a_grpc_infer_continues_the_trace_from_its_metadata(traced_server):
    from torchferry.serving.protos import inference_pb2 as pb
    from torchferry.serving.protos.inference_pb2_grpc import GRPCInferenceServiceStub

    trace_id = "2" * 32
    x = np.full((1, 4), SECRET, np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=x.shape)
    infer = pb.ModelInferRequest(
        model_name="adder", inputs=[tensor], raw_input_contents=[x.tobytes()]
    )
    with grpc.insecure_channel(traced_server.grpc_target) as channel:
        GRPCInferenceServiceStub(channel).ModelInfer(
            infer, timeout=30, metadata=[("traceparent", f"00-{trace_id}-{PARENT_ID}-01")]
        )
    root, children = _server_span(traced_server, trace_id)
    assert root.name.endswith("ModelInfer")
    assert format(root.parent.span_id, "016x") == PARENT_ID
    assert root.attributes["rpc.grpc.status_code"] == 0
    assert {"queue", "compute"} <= set(children)
    _no_payload([root, *children.values()])


def test_a_server_fault_is_an_error_span(traced_server):
    from opentelemetry.trace import StatusCode

    trace_id = "3" * 32
    answer = httpx.post(
        f"{traced_server.url}/v2/models/nope/infer",
        content=b'{"inputs": []}',
        headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01"},
        timeout=30,
    )
    assert answer.status_code == 404
    root, _ = _server_span(traced_server, trace_id)
    assert root.name == "POST " + INFER_ROUTE
    assert root.status.status_code is StatusCode.UNSET  # the client's fault, not the server's


def _console_spans(output: str) -> list[dict[str, Any]]:
    """The spans ConsoleSpanExporter printed (one indented JSON object each) among log lines."""
    spans, lines = [], output.splitlines()
    for i, line in enumerate(lines):
        if line == "{":
            end = lines.index("}", i)
            spans.append(json.loads("\n".join(lines[i : end + 1])))
    return spans


def test_serve_with_otel_sends_spans_to_the_configured_exporter(model_store, tmp_path, monkeypatch):
    pytest.importorskip("opentelemetry.sdk")
    if not _records_are_wired():
        pytest.skip(NEEDS_WIRING)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "ferry-e2e")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    trace_id = "4" * 32
    args = ["--store", str(model_store.root), "--model", "adder", "--threads", "1", "--otel"]
    with serve_in_subprocess(args, tmp_path / "server.log") as server:
        body = {
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [SECRET] * 4}]
        }
        answer = httpx.post(
            f"{server.url}/v2/models/adder/infer",
            content=orjson.dumps(body),
            headers={"traceparent": f"00-{trace_id}-{PARENT_ID}-01"},
            timeout=30,
        )
        assert answer.status_code == 200
        deadline = time.monotonic() + 10
        while f'"trace_id": "0x{trace_id}"' not in server.output() and time.monotonic() < deadline:
            time.sleep(0.05)
    ours = [
        s for s in _console_spans(server.output()) if s["context"]["trace_id"] == f"0x{trace_id}"
    ]
    assert ours, (
        "no spans of the request in the server's output: is tracing_observer(settings) wired?"
    )
    names = {s["name"] for s in ours}
    assert "POST " + INFER_ROUTE in names
    assert {s["resource"]["attributes"]["service.name"] for s in ours} == {"ferry-e2e"}
    assert "1234.5" not in server.output()
