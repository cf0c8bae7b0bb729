"""What happened to one request, and who hears of it when it ends.

Each request gets one :class:`RequestRecord` where it enters the server (the HTTP entry,
``observe_http.RecordRequests``, or the gRPC call wrapper). The data plane and the batcher
fill in what they learn (model, version, rows, batch size, when it was queued and computed)
through :func:`current_record`; when the answer has gone out, the entry point calls
:meth:`Observers.finish`, and each observer (metrics, the access log, traces) reads the
finished record. Nothing here ever holds a payload value.

Records cost about a microsecond each: one slotted object, two clock reads, and one
context variable set per request. Observers run on the event loop, after the answer, so
they must be cheap too: an observer that raises is logged and skipped, never the request's
problem.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from torchferry.serving.auth.keyring import Grant

log = logging.getLogger("torchferry.observe")

#: Time marks are ``time.perf_counter()`` seconds; ``wall_ns`` anchors them to the clock.


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    #: ``"v2"``, ``"v2-grpc"``, ``"v1"``, ``"predict"``, ``"torchserve"`` or ``"http"``.
    protocol: str
    #: The route template (``/v2/models/{model_name}/infer``) or the gRPC method name;
    #: ``"unmatched"`` for an HTTP path no route took (never the raw path: it is unbounded).
    route: str
    started: float
    wall_ns: int
    #: W3C trace context the client sent, if any.
    traceparent: str | None = None
    tracestate: str | None = None
    #: Set by the data plane when the request reaches a model: only inference requests have
    #: a model, and only they count in the per-model (Triton) metrics.
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
    #: The HTTP method (``"POST"``); empty for gRPC, whose route names the call.
    method: str = ""
    #: Whether the client named the request (``X-Request-ID``); if not, a V2 request's own
    #: ``id`` becomes the request id once the data plane sees it.
    request_id_sent: bool = False
    #: With ``--auth``: who called (the token's id and scopes, never its text), or the error
    #: to answer the request with once it reaches a model (no token, a bad one, over rate).
    grant: Grant | None = None
    #: Seconds the request waited for its model version to load (``--memory-budget``);
    #: None when it found the version loaded.
    cold_load_s: float | None = None

    def wall_ns_at(self, mark: float) -> int:
        """A ``perf_counter`` mark as ``time.time_ns()`` (for logs and trace spans)."""
        return self.wall_ns + int((mark - self.started) * 1e9)

    @property
    def duration_s(self) -> float:
        return (self.ended if self.ended is not None else time.perf_counter()) - self.started

    def adopt_id(self, request_id: object) -> None:
        """Take a protocol's own request id (V2's ``id``) unless the client sent a header id;
        ignored unless it is a usable id (see :func:`valid_request_id`)."""
        if not self.request_id_sent and valid_request_id(request_id):
            assert isinstance(request_id, str)
            self.request_id = request_id


_current: ContextVar[RequestRecord | None] = ContextVar("torchferry_request", default=None)


def current_record() -> RequestRecord | None:
    """The record of the request this task is serving, if any."""
    return _current.get()


# -- request ids ---------------------------------------------------------------------------------

#: Visible ASCII only, bounded: an id goes back in a response header and into log lines, so
#: it may not carry a line break, a space or a megabyte.
_VALID_ID = re.compile(r"[!-~]{1,128}")


def valid_request_id(value: object) -> bool:
    return isinstance(value, str) and _VALID_ID.fullmatch(value) is not None


_prefix = ""
_counter = itertools.count()


def _reseed() -> None:
    """A fresh random prefix per process (and per fork), so ids differ across workers."""
    global _prefix, _counter
    _prefix = os.urandom(8).hex()
    _counter = itertools.count()


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_request_id() -> str:
    """32 hex digits: a random per-process prefix and a counter (a third of uuid4's cost)."""
    return f"{_prefix}{next(_counter):016x}"


# -- observers -----------------------------------------------------------------------------------

Observer = Callable[[RequestRecord], None]


class Observers:
    """Starts records and hands each finished one to every observer, in order.

    ``observers`` is a plain list: append to it (before the server starts) to hear of every
    finished request."""

    def __init__(self, observers: list[Observer] | None = None) -> None:
        self.observers: list[Observer] = list(observers or [])

    def start(
        self,
        protocol: str,
        route: str,
        request_id: str | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
        method: str = "",
    ) -> RequestRecord:
        """A new record, made the current one of this task. ``request_id`` is the client's
        (kept when valid, else replaced by a new one)."""
        sent = request_id is not None and valid_request_id(request_id)
        if request_id is None or not sent:
            request_id = new_request_id()
        # positional: keywords make this constructor twice as slow, for every request
        record = RequestRecord(
            request_id,
            protocol,
            route,
            time.perf_counter(),
            time.time_ns(),
            traceparent,
            tracestate,
        )
        record.method = method
        record.request_id_sent = sent
        _current.set(record)
        return record

    def finish(self, record: RequestRecord, status: str) -> None:
        record.status = status
        record.ended = time.perf_counter()
        if _current.get() is record:  # where the caller's task goes on (an in-process client)
            _current.set(None)
        for observer in self.observers:
            try:
                observer(record)
            except Exception:  # an observer's bug must not fail or stall the request
                log.exception("request observer %r failed", observer)
