"""OpenTelemetry traces of finished requests (the optional ``otel`` extra).

:class:`TracingObserver` is an observer (see :mod:`torchferry.serving.observe`): it reads a
finished :class:`RequestRecord` and writes its spans *after the fact*, with the record's own
timestamps: nothing is live while the request runs, and the observer's whole cost, when the
answer has gone out, is ~40 us of CPU for five spans (``bench/tracing_cost.py``):

- one ``SERVER`` span per request, named ``{method} {route}`` for HTTP
  (``POST /v2/models/{model_name}/infer``) and ``{service}/{method}`` for gRPC
  (``inference.GRPCInferenceService/ModelInfer``); its attributes are the request id,
  protocol, route, model, version, status, rows and batch size (never a payload value);
  its status is ERROR for a server fault: HTTP 5xx, or the gRPC codes that OpenTelemetry's
  conventions count as server errors (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
  UNAVAILABLE, DATA_LOSS);
- under it, ``decode`` (started → decoded), ``queue`` (queued → compute started),
  ``compute`` (compute started → ended) and ``encode`` (compute ended → answer sent), each
  only where the record has both marks.

A client's trace goes on through the server: the record's ``traceparent``/``tracestate`` (the
HTTP headers, or the gRPC metadata of those names) are read by the W3C TraceContext
propagator and become the server span's parent, and the sampler (parent-based by default)
follows the client's sampled flag.

Spans leave through a ``BatchSpanProcessor``: the observer only queues a finished span, and a
background thread exports them in batches, off the request path.

**When tracing is on.** ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it
off whatever else is said. Otherwise it is on with ``torchferry serve --otel``
(``ServerSettings.otel``), whose exporter defaults to ``otlp``, or without the flag when
``OTEL_TRACES_EXPORTER`` names an exporter. ``OTEL_SERVICE_NAME`` alone does not turn it on
(platforms set it for other reasons). With the flag, a missing ``otel`` extra or exporter
package is an error at start; asked by the environment alone, it is a warning and the
server runs untraced.

**Configuration** is the SDK's own reading of the standard variables: ``OTEL_SERVICE_NAME``
and ``OTEL_RESOURCE_ATTRIBUTES`` (the service is ``torchferry`` when neither names it),
``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_BSP_*`` (batch size, delay,
queue), ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``..._TRACES_ENDPOINT``, ``..._HEADERS``,
``..._TIMEOUT``, ``..._CERTIFICATE`` and the rest. ``OTEL_TRACES_EXPORTER`` is a comma list of
exporters installed under the SDK's ``opentelemetry_traces_exporter`` entry points
(``otlp``, ``console``, ``otlp_proto_grpc``, ``otlp_proto_http``, ...); ``otlp`` is OTLP over
gRPC (port 4317), or over HTTP (4318) when ``OTEL_EXPORTER_OTLP_PROTOCOL`` (or
``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``) is ``http/protobuf``, as in the Python SDK's own
auto-configuration. The extra installs both OTLP exporters.

This module imports without OpenTelemetry installed; the SDK is imported only when tracing
is switched on.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torchferry
from torchferry.errors import TorchferryError
from torchferry.serving.observe import RequestRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SpanExporter

    from torchferry.serving.settings import ServerSettings

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'torchferry[otel]'"
#: The SDK's entry-point group for span exporters (what ``OTEL_TRACES_EXPORTER`` names).
EXPORTER_GROUP = "opentelemetry_traces_exporter"
#: ``otlp`` by ``OTEL_EXPORTER_OTLP_PROTOCOL``, as the Python SDK's auto-configuration reads it.
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}

#: gRPC codes that are the server's fault (OpenTelemetry's RPC conventions for server spans).
GRPC_SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
#: gRPC status codes by name, numbered in order (``rpc.grpc.status_code`` is the number).
_GRPC_CODE_NAMES = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
]  # fmt: skip
GRPC_CODES = {name: number for number, name in enumerate(_GRPC_CODE_NAMES)}


class TracingUnavailable(TorchferryError):
    """Tracing was asked for, but the ``otel`` extra (or the named exporter) is missing."""


def _is_grpc(record: RequestRecord) -> bool:
    return record.protocol.endswith("grpc")


def span_name(record: RequestRecord) -> str:
    """``POST /v2/models/{model_name}/infer``, or ``inference.GRPCInferenceService/ModelInfer``."""
    if _is_grpc(record):
        return record.route.lstrip("/")
    return f"{record.method} {record.route}" if record.method else record.route


def is_server_error(record: RequestRecord) -> bool:
    """Whether the answer was the server's fault (a client's 4xx or NOT_FOUND is not)."""
    if record.status.isdigit():
        return int(record.status) >= 500
    return record.status in GRPC_SERVER_ERRORS


def span_attributes(record: RequestRecord) -> dict[str, Any]:
    """What the server span says: names, codes and counts, never a payload value."""
    attributes: dict[str, Any] = {
        "torchferry.request_id": record.request_id,
        "torchferry.protocol": record.protocol,
        "torchferry.status": record.status,
        "torchferry.success": record.success,
    }
    if _is_grpc(record):
        attributes["rpc.system"] = "grpc"
        service, _, method = record.route.lstrip("/").rpartition("/")
        if service:
            attributes["rpc.service"] = service
        attributes["rpc.method"] = method
        if record.status in GRPC_CODES:
            attributes["rpc.grpc.status_code"] = GRPC_CODES[record.status]
    else:
        attributes["http.route"] = record.route
        if record.method:
            attributes["http.request.method"] = record.method
        if record.status.isdigit():
            attributes["http.response.status_code"] = int(record.status)
    if is_server_error(record):
        attributes["error.type"] = record.status
    if record.model is not None:
        attributes["torchferry.model.name"] = record.model
    if record.version is not None:
        attributes["torchferry.model.version"] = record.version
    if record.rows:
        attributes["torchferry.rows"] = record.rows
    if record.batch_size:
        attributes["torchferry.batch_size"] = record.batch_size
    return attributes


class TracingObserver:
    """Turns each finished record into a server span and its phase spans.

    The spans are built finished (the SDK's ``ReadableSpan``, what exporters read) and handed
    to the export processors, rather than started and ended through a ``Tracer``: the record
    already holds every timestamp, and the tracer's live-span machinery (locks, limits,
    context, a sampler call per span) cost ~8x more on the event loop. The sampler still
    decides each trace, once, at its root. The ``TracerProvider`` supplies the configuration
    the SDK reads from the environment (resource, sampler, id generator) and flushes the
    processors at exit.
    """

    def __init__(self, exporters: Sequence[SpanExporter]) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as exc:
            raise TracingUnavailable(f"tracing needs the otel extra: {INSTALL_HINT}") from exc
        # the sampler comes from OTEL_TRACES_SAMPLER(_ARG) when none is given
        self.provider = TracerProvider(resource=_resource())
        self._processors = [BatchSpanProcessor(exporter) for exporter in exporters]
        for processor in self._processors:
            self.provider.add_span_processor(processor)
        self._scope = InstrumentationScope("torchferry.serving", torchferry.__version__)
        self._propagator = TraceContextTextMapPropagator()
        self._trace = trace
        self._readable = ReadableSpan
        self._error = trace.Status(trace.StatusCode.ERROR)
        self._failed = False

    def __call__(self, record: RequestRecord) -> None:
        # A trace is never worth a failed request: observers run as the request finishes.
        try:
            self._emit(record)
        except Exception:
            if not self._failed:
                self._failed = True
                logger.warning("tracing: a request's spans were dropped", exc_info=True)

    def _emit(self, record: RequestRecord) -> None:
        trace, provider = self._trace, self.provider
        parent_context = None
        parent = None
        if record.traceparent:
            carrier = {"traceparent": record.traceparent}
            if record.tracestate:
                carrier["tracestate"] = record.tracestate
            parent_context = self._propagator.extract(carrier)
            parent = trace.get_current_span(parent_context).get_span_context()
            if not parent.is_valid:
                parent, parent_context = None, None
        trace_id = parent.trace_id if parent else provider.id_generator.generate_trace_id()
        name = span_name(record)
        attributes = span_attributes(record)
        kind = trace.SpanKind.SERVER
        sampled = provider.sampler.should_sample(parent_context, trace_id, name, kind, attributes)
        if not sampled.decision.is_sampled():
            return
        flags = trace.TraceFlags(trace.TraceFlags.SAMPLED)
        server = trace.SpanContext(
            trace_id, provider.id_generator.generate_span_id(), False, flags, sampled.trace_state
        )
        ended = record.ended if record.ended is not None else time.perf_counter()
        spans = [
            self._readable(
                name=name,
                context=server,
                parent=parent,
                resource=provider.resource,
                attributes=sampled.attributes or attributes,
                kind=kind,
                status=self._error if is_server_error(record) else trace.Status(),
                start_time=record.wall_ns,
                end_time=record.wall_ns_at(max(ended, record.started)),
                instrumentation_scope=self._scope,
            )
        ]
        phases = (
            ("decode", record.started, record.decoded),
            ("queue", record.queued, record.compute_started),
            ("compute", record.compute_started, record.compute_ended),
            ("encode", record.compute_ended, record.ended),
        )
        for phase, begin, end in phases:
            if begin is None or end is None:
                continue
            context = trace.SpanContext(
                trace_id, provider.id_generator.generate_span_id(), False, flags, server.trace_state
            )
            spans.append(
                self._readable(
                    name=phase,
                    context=context,
                    parent=server,
                    resource=provider.resource,
                    start_time=record.wall_ns_at(begin),
                    end_time=record.wall_ns_at(max(begin, end)),
                    instrumentation_scope=self._scope,
                )
            )
        # children first, as a tracer would end them
        for span in reversed(spans):
            for processor in self._processors:
                processor.on_end(span)

    def force_flush(self) -> None:
        """Export what is queued now (tests; the processors export on their own schedule)."""
        self.provider.force_flush()

    def shutdown(self) -> None:
        """Export what is queued and stop the export thread (also done at exit)."""
        self.provider.shutdown()


def _resource() -> Resource:
    """The SDK's resource from ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``; the
    service is ``torchferry`` (this version) when they do not name it."""
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource

    resource = Resource.create({})
    ours: dict[str, str] = {}
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        ours[SERVICE_NAME] = "torchferry"
    if SERVICE_VERSION not in resource.attributes:
        ours[SERVICE_VERSION] = torchferry.__version__
    return resource.merge(Resource(ours))


def _exporter_entry(name: str) -> str:
    if name != "otlp":
        return name
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    protocol = protocol.strip().lower()
    if protocol not in _OTLP_BY_PROTOCOL:
        raise TracingUnavailable(
            f"OTLP protocol {protocol!r} is not supported for traces "
            f"(use one of: {', '.join(_OTLP_BY_PROTOCOL)})"
        )
    return _OTLP_BY_PROTOCOL[protocol]


def exporters_from_env() -> list[SpanExporter]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names (``otlp`` when unset), each configured by
    its own ``OTEL_EXPORTER_*`` variables."""
    exporters: list[SpanExporter] = []
    names = os.environ.get("OTEL_TRACES_EXPORTER") or "otlp"
    for name in (n.strip().lower() for n in names.split(",")):
        if not name or name == "none":
            continue
        entry = _exporter_entry(name)
        found = importlib.metadata.entry_points(group=EXPORTER_GROUP, name=entry)
        if not found:
            raise TracingUnavailable(
                f"OTEL_TRACES_EXPORTER={name}: no trace exporter {entry!r} is installed "
                f"({INSTALL_HINT} brings the OTLP exporters)"
            )
        try:
            exporter_class = next(iter(found)).load()
        except ImportError as exc:
            raise TracingUnavailable(
                f"OTEL_TRACES_EXPORTER={name}: exporter {entry!r} does not import ({exc}); "
                f"{INSTALL_HINT} installs the OTLP exporters"
            ) from exc
        exporters.append(exporter_class())
    return exporters


def _require_sdk() -> None:
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise TracingUnavailable(f"tracing needs the otel extra: {INSTALL_HINT}") from exc


def tracing_requested(flag: bool) -> bool:
    """Whether the operator asked for traces: ``--otel``, or ``OTEL_TRACES_EXPORTER`` set;
    ``OTEL_SDK_DISABLED=true`` and ``OTEL_TRACES_EXPORTER=none`` win over both."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return flag or bool(exporter)


def tracing_observer(
    settings: ServerSettings | bool = False,
    exporters: Sequence[SpanExporter] | None = None,
) -> TracingObserver | None:
    """The tracing observer to add to the server's observers, or None when tracing is off.

    ``settings`` is the server's settings (``settings.otel`` is ``--otel``) or that flag
    itself. Raises :class:`TracingUnavailable` when the flag asks for tracing that cannot be
    had (no ``otel`` extra, an exporter that is not installed); when only the environment
    asked, that is a warning and the answer is None."""
    flag = settings if isinstance(settings, bool) else settings.otel
    if not tracing_requested(flag):
        return None
    try:
        _require_sdk()
        return TracingObserver(exporters if exporters is not None else exporters_from_env())
    except TracingUnavailable as exc:
        if flag:
            raise
        logger.warning("OTEL_TRACES_EXPORTER is set but traces are off: %s", exc.message)
        return None
