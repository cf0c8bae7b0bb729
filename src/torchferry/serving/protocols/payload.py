"""The payload routes' request, read once: ``/predict`` and TorchServe's ``/predictions``
both hand the model's handler a :class:`~torchferry.handlers.HandlerRequest`.

A multipart body is split into its uploaded files and text fields (each part at most the
body limit); any other body is kept as raw bytes. Nothing is parsed further here: what the
bytes mean (JSON, an image, text) is the handler's business, and JSON is parsed on the
preprocessing pool, off the event loop.
"""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile

from torchferry.errors import InvalidInput, TorchferryError
from torchferry.handlers.base import HandlerRequest


async def read_payload(request: Request, route: str) -> HandlerRequest:
    content_type = request.headers.get("content-type", "")
    headers = dict(request.headers)
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        body = await request.body()
        return HandlerRequest(body, content_type, headers, route=route)
    try:
        form = await request.form(max_part_size=request.app.state.settings.max_body_bytes)
    except TorchferryError:
        raise
    except Exception as exc:  # malformed multipart bodies raise from the parser
        raise InvalidInput(f"the multipart body cannot be parsed: {exc}") from None
    files: dict[str, list[bytes]] = {}
    texts: dict[str, list[str]] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.setdefault(key, []).append(await value.read())
            else:
                texts.setdefault(key, []).append(value)
    finally:
        await form.close()
    return HandlerRequest(b"", content_type, headers, files=files, form=texts, route=route)
