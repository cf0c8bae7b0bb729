"""The console's try-it forwarder (``POST /console/api/try/{path}``): a request the page
sends to its own origin, passed on to the inference listener, so that the page needs no
cross-origin access and the inference listener keeps checking the token itself.

Only the inference routes can be reached (``v2/models/...``, ``v1/models/...``,
``predict[/...]``, ``predictions/...``); only the headers an inference call needs go, and
come back, plus ``X-Torchferry-Latency-Ms`` (the time of the inference call as the
forwarder measured it). The listener is our own socket: an address it listens on every
interface with is reached on loopback, and its TLS certificate is not checked (its name may
be anything); with mutual TLS the forwarder has no client certificate, so it refuses (501).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
from starlette.requests import Request
from starlette.responses import Response

from torchferry.errors import ModelNotFound, PayloadTooLarge, TorchferryError
from torchferry.serving.management.answers import triton_error
from torchferry.serving.settings import ServerSettings

#: Request headers passed on; then response headers passed back.
REQUEST_HEADERS = (
    "content-type",
    "authorization",
    "inference-header-content-length",
    "x-traffic-key",
)
RESPONSE_HEADERS = (
    "content-type",
    "x-request-id",
    "x-model-version",
    "inference-header-content-length",
)
LATENCY_HEADER = "X-Torchferry-Latency-Ms"
PROXY_HEADER = "X-Torchferry-Proxy"
INFERENCE_PREFIXES = ("v2/models/", "v1/models/", "predictions/", "predict/")
#: Waiting for an answer when the server sets no request timeout.
DEFAULT_READ_TIMEOUT_S = 120.0
#: Beyond the server's own request timeout (it answers 504 itself first).
TIMEOUT_MARGIN_S = 5.0
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


class ProxyFailed(TorchferryError):
    """The inference listener could not be reached, or did not answer in time."""

    status_code = 502


class ProxyUnsupported(TorchferryError):
    """The forwarder cannot make this call (mutual TLS, Ray Serve)."""

    status_code = 501


def inference_path(path: str) -> str:
    """``path`` if it names an inference route, else ModelNotFound (404)."""
    segments = path.split("/")
    known = path == "predict" or path.startswith(INFERENCE_PREFIXES)
    if not known or any(s in ("", ".", "..") for s in segments):
        shown = path if len(path) <= 200 else path[:200] + "..."
        raise ModelNotFound(
            f"try: {shown!r} is not an inference route (v2/models/..., v1/models/..., "
            "predict, predict/..., predictions/...)"
        )
    return path


def base_url(settings: ServerSettings) -> str:
    host = _ANY_ADDRESS.get(settings.host, settings.host)
    if ":" in host:
        host = f"[{host}]"
    return f"{settings.scheme}://{host}:{settings.port}"


class Forwarder:
    """One HTTP client per app (and event loop) for every try-it call."""

    def __init__(self, target: Callable[[], ServerSettings | None]) -> None:
        #: The settings the inference listener runs with (its real port); None: no
        #: listener this process knows (Ray Serve).
        self.target = target
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client_for(self, settings: ServerSettings) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            read = settings.request_timeout_s
            read = read + TIMEOUT_MARGIN_S if read is not None else DEFAULT_READ_TIMEOUT_S
            timeout = httpx.Timeout(read, connect=5.0)
            # our own listener: its certificate may name anything but this loopback address
            # and no idle connection kept: one would hold up a worker's drain
            self._client = httpx.AsyncClient(
                timeout=timeout,
                verify=False,
                trust_env=False,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
            self._loop = loop
        return self._client

    async def forward(self, request: Request, path: str) -> Response:
        try:
            return await self._forward(request, inference_path(path))
        except (ProxyFailed, ProxyUnsupported) as exc:
            answer = triton_error(exc)
            answer.headers[PROXY_HEADER] = "error"
            return answer

    async def _forward(self, request: Request, path: str) -> Response:
        settings = self.target()
        if settings is None:
            raise ProxyUnsupported(
                "try-it is not forwarded under Ray Serve: send the request to Serve's proxy"
            )
        if settings.tls_client_ca is not None:
            raise ProxyUnsupported(
                "try-it cannot be forwarded with mutual TLS (--tls-client-ca): the console has "
                "no client certificate; send the request with your own"
            )
        body = await _read_body(request, settings.max_body_bytes)
        headers = {k: v for k in REQUEST_HEADERS if (v := request.headers.get(k)) is not None}
        url = f"{base_url(settings)}/{path}"
        query = request.url.query
        client = self._client_for(settings)
        started = time.perf_counter()
        try:
            answer = await client.post(
                url + (f"?{query}" if query else ""), content=body, headers=headers
            )
        except httpx.TimeoutException:
            raise ProxyFailed(
                f"try: the inference listener at {url} did not answer in time"
            ) from None
        except httpx.HTTPError as exc:
            raise ProxyFailed(
                f"try: the inference listener at {url} cannot be reached: {exc}"
            ) from None
        latency_ms = (time.perf_counter() - started) * 1000.0
        passed = {k: v for k in RESPONSE_HEADERS if (v := answer.headers.get(k)) is not None}
        passed[LATENCY_HEADER] = f"{latency_ms:.3f}"
        return Response(answer.content, status_code=answer.status_code, headers=passed)


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = PayloadTooLarge(
        f"the request body is larger than the server's limit of {limit} bytes"
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
