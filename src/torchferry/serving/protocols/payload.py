"""The payload routes' request, read once: ``/predict`` and TorchServe's ``/predictions``
both hand the model's handler a :class:`~torchferry.handlers.HandlerRequest`.

A multipart body is split into its uploaded files and text fields (each part at most the
body limit), in memory; any other body is kept as raw bytes. Nothing of it is written to
disk, and the handler never sees the request's credentials (``Authorization``). Nothing is parsed further here: what the
bytes mean (JSON, an image, text) is the handler's business, and JSON is parsed on the
preprocessing pool, off the event loop.
"""

from __future__ import annotations

from contextlib import aclosing

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from torchferry.errors import InvalidInput, TorchferryError
from torchferry.handlers.base import HandlerRequest

#: Request headers a handler never sees.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization"})


async def read_payload(request: Request, route: str) -> HandlerRequest:
    content_type = request.headers.get("content-type", "")
    # credentials are the server's to check, never a handler's to read (or to log)
    headers = {k: v for k, v in request.headers.items() if k not in CREDENTIAL_HEADERS}
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        body = await request.body()
        return HandlerRequest(body, content_type, headers, route=route)
    limit = request.app.state.settings.max_body_bytes
    try:
        async with aclosing(request.stream()) as stream:
            parser = MultiPartParser(request.headers, stream, max_part_size=limit)
            # uploads stay in memory, bounded by the body limit as every other body is:
            # Starlette would spool a file past 1 MB to a temporary file on disk
            parser.spool_max_size = limit
            form = await parser.parse()
    except TorchferryError:
        raise
    except MultiPartException as exc:  # Starlette's messages are its own fixed sentences
        raise InvalidInput(f"the multipart body cannot be parsed: {exc.message}") from None
    except Exception as exc:  # the parser's own may quote the body: its type only
        raise InvalidInput(f"the multipart body cannot be parsed ({type(exc).__name__})") from None
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
