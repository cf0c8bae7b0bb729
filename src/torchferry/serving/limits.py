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

    async def check(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """The ``receive`` to read the request's body with, or None once refused with 413."""
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    break  # as if undeclared (the HTTP parser refuses such requests anyway)
                if declared > self.max_body_bytes:
                    await self._refuse(send, declared)
                    return None
                # the HTTP parser passes no more body than Content-Length declares
                return receive
        return self._counted(receive)

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

    async def _refuse(self, send: Send, size: int) -> None:
        body = dumps({"error": self._message(size)})
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
