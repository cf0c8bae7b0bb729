"""What happened to one request, and who hears of it when it ends.

Each request gets one :class:`RequestRecord` where it enters the server (the HTTP entry, or
the gRPC call wrapper). The data plane and the batcher fill in what they learn (model,
version, rows, batch size, when it was queued and computed) through :func:`current_record`;
when the answer has gone out, the entry point calls :meth:`Observers.finish`, and each
observer (metrics, the access log, traces) reads the finished record. Nothing here ever
holds a payload value.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

#: Time marks are ``time.perf_counter()`` seconds; ``wall_ns`` anchors them to the clock.


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    #: ``"v2"``, ``"v2-grpc"``, ``"v1"``, ``"predict"``, ``"torchserve"`` or ``"http"``.
    protocol: str
    #: The route template (``/v2/models/{model_name}/infer``) or the gRPC method name.
    route: str
    started: float
    wall_ns: int
    #: W3C trace context the client sent, if any.
    traceparent: str | None = None
    tracestate: str | None = None
    #: The HTTP method (``"POST"``); None for gRPC, whose ``route`` is the method.
    method: str | None = None
    model: str | None = None
    version: str | None = None
    #: The HTTP status as text (``"200"``), or the gRPC code's name (``"OK"``).
    status: str = ""
    #: Whether the model answered (Triton's success); False for any error.
    success: bool = False
    #: Rows this request carried, and rows in the batch that ran them.
    rows: int = 0
    batch_size: int = 0
    decoded: float | None = None
    queued: float | None = None
    compute_started: float | None = None
    compute_ended: float | None = None
    ended: float | None = None

    def wall_ns_at(self, mark: float) -> int:
        """A ``perf_counter`` mark as ``time.time_ns()`` (for logs and trace spans)."""
        return self.wall_ns + int((mark - self.started) * 1e9)

    @property
    def duration_s(self) -> float:
        return (self.ended if self.ended is not None else time.perf_counter()) - self.started


_current: ContextVar[RequestRecord | None] = ContextVar("torchferry_request", default=None)


def current_record() -> RequestRecord | None:
    """The record of the request this task is serving, if any."""
    return _current.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


Observer = Callable[[RequestRecord], None]


class Observers:
    """Starts records and hands each finished one to every observer, in order."""

    def __init__(self, observers: list[Observer] | None = None) -> None:
        self.observers: list[Observer] = list(observers or [])

    def start(
        self,
        protocol: str,
        route: str,
        request_id: str | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
        method: str | None = None,
    ) -> RequestRecord:
        record = RequestRecord(
            request_id=request_id or new_request_id(),
            protocol=protocol,
            route=route,
            started=time.perf_counter(),
            wall_ns=time.time_ns(),
            traceparent=traceparent,
            tracestate=tracestate,
            method=method,
        )
        _current.set(record)
        return record

    def finish(self, record: RequestRecord, status: str) -> None:
        record.status = status
        record.ended = time.perf_counter()
        for observer in self.observers:
            observer(record)
