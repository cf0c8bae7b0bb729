"""The request body limit: 413 for bodies over it, applied once per request by the app's
entry (``hotpath.py``) to every route."""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send

from torchferry.codecs.jsonio import dumps
from torchferry.errors import PayloadTooLarge


class BodyLimit:
    """Refuse a declared ``Content-Length`` over the limit before reading a byte, and stop
    reading a body of undeclared length (chunked) as soon as it passes the limit."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes

    def receive_for(self, scope: Scope, receive: Receive) -> Receive | None:
        """The ``receive`` to read the request's body with; None when its declared length is
        over the limit (answer with ``refuse``)."""
        declared = _declared(scope)
        if declared is None:
            return self._counted(receive)
        # the HTTP parser passes no more body than Content-Length declares
        return receive if declared <= self.max_body_bytes else None

    async def refuse(self, scope: Scope, send: Send) -> None:
        """413 for a request whose declared length is over the limit, before reading it."""
        body = dumps({"error": self._message(_declared(scope) or 0)})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _counted(self, receive: Receive) -> Receive:
        limit = self.max_body_bytes
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(self._message(received))
            return message

        return limited_receive

    def _message(self, size: int) -> str:
        return (
            f"request body of {size} bytes exceeds the limit of {self.max_body_bytes} bytes "
            "(raise it with --max-body-size)"
        )


def _declared(scope: Scope) -> int | None:
    """The request's ``Content-Length``; None when absent or not a number (the HTTP parser
    refuses the latter anyway)."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
