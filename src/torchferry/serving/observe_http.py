"""The HTTP entry of every request record: an outermost, pure ASGI wrapper.

``RecordRequests`` starts a record per HTTP request (the client's ``X-Request-ID`` or a new
one, and W3C ``traceparent``/``tracestate``), echoes the request id on the response, names
the model version that served an inference (``X-Model-Version``, from the record, so every
protocol's answer carries it and none has to set it), and
once the response has gone out hands the record, with its status, to the observers. It
wraps the whole app, so it sees every answer, the app's error pages and the body limit's
413 included.

The route and protocol come from ``scope["route"]``, which the router sets to the matched
route: its ``path`` is the template (``/v2/models/{model_name}/infer``), a label of
bounded cardinality, where the raw path is not. A path no route matched is
``"unmatched"``.

With ``--auth`` it also reads the ``Authorization`` header into the record's grant (who
called, or why nobody did): the data plane decides what the caller may do. The header
itself goes nowhere else.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from torchferry.serving.auth.keyring import KeyRing, authorization_of
from torchferry.serving.observe import Observers

#: Route template prefix -> protocol; the first that matches wins.
_PROTOCOL_PREFIXES = (
    ("/v2", "v2"),
    ("/v1", "v1"),
    ("/predictions", "torchserve"),
    ("/predict", "predict"),
    ("/ping", "torchserve"),
    ("/models", "torchserve"),
    ("/api-description", "torchserve"),
)
UNMATCHED = "unmatched"
#: On an answer whose request waited for its model version to load: the seconds it waited.
COLD_LOAD_HEADER = b"x-torchferry-cold-load"


def protocol_of(route: str) -> str:
    """The protocol a route template belongs to (``"http"`` for the app's own pages)."""
    for prefix, protocol in _PROTOCOL_PREFIXES:
        if route == prefix or (route.startswith(prefix) and route[len(prefix)] in "/:"):
            return protocol
    return "http"


class RecordRequests:
    """ASGI wrapper: one request record per HTTP request, finished after the response."""

    def __init__(self, app: ASGIApp, observers: Observers, keys: KeyRing | None = None) -> None:
        self.app = app
        self.observers = observers
        #: With ``--auth``: who each request's token names goes on its record (the data
        #: plane refuses or allows it), read here, once, with the other headers.
        self.keys = keys
        #: route template -> protocol (bounded by the number of routes)
        self._protocols: dict[str, str] = {}

    @property
    def state(self) -> Any:
        """The wrapped app's ``state`` (``repository``, ``plane``, ``settings``...)."""
        return self.app.state  # type: ignore[attr-defined]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = traceparent = tracestate = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                request_id = value.decode("latin-1")
            elif key == b"traceparent":
                traceparent = value.decode("latin-1")
            elif key == b"tracestate":
                tracestate = value.decode("latin-1")
        record = self.observers.start(
            "http", UNMATCHED, request_id, traceparent, tracestate, scope["method"]
        )
        if self.keys is not None:
            record.grant = self.keys.authenticate(authorization_of(scope["headers"]))
        status = "500"  # what the server answers when the app raised before it answered

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
                # the id as it is now: the data plane may have adopted V2's own "id"
                headers = [
                    *message.get("headers", ()),
                    (b"x-request-id", record.request_id.encode()),
                ]
                if record.version is not None:  # the version the data plane routed it to
                    headers.append((b"x-model-version", record.version.encode()))
                if record.cold_load_s is not None:  # it waited for its model to load
                    headers.append((COLD_LOAD_HEADER, b"%.3f" % record.cold_load_s))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None)
            if isinstance(path, str):
                record.route = path
                protocol = self._protocols.get(path)
                if protocol is None:
                    protocol = self._protocols[path] = protocol_of(path)
                record.protocol = protocol
            self.observers.finish(record, status)
