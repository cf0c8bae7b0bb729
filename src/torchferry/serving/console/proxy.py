"""The console's try-it forwarder (``POST /console/api/try/{path}``): a request the page
sends to its own origin, passed on to the inference listener, so that the page needs no
cross-origin access and the inference listener keeps checking the token itself.

Only the inference routes can be reached (``v2/models/...``, ``v1/models/...``,
``predict[/...]``, ``predictions/...``); only the headers an inference call needs go, and
come back, plus ``X-Torchferry-Latency-Ms``: the forwarder's round trip to the inference
listener, connection included (it keeps no idle connection, so each call connects, with TLS
where the listener has it).

The path is checked decoded (``..``, the allowed routes) and forwarded as the client encoded
it, so ``%3F``, ``%23`` or ``%2F`` stay inside a name. At most ``MAX_CONCURRENT`` calls are
forwarded at once (503 with ``Retry-After`` beyond), only tokens with an infer scope get
here (``app.console_needs``), and an answer is read up to ``MAX_ANSWER_BYTES`` (502 beyond):
the supervisor holds little for the page. The listener is our own socket: an address it listens on every
interface with is reached on loopback, and its TLS certificate is not checked (its name may
be anything); with mutual TLS the forwarder has no client certificate, so it refuses (501).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import quote

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from torchferry.errors import (
    InvalidInput,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    TorchferryError,
)
from torchferry.serving.listen import host_port
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
#: Try-it calls forwarded at once; each holds its request body (up to --max-body-size).
MAX_CONCURRENT = 4
#: The largest answer passed back to the page.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
#: A try-it answer is never rendered as a page of the console's origin.
ANSWER_HEADERS = {"Content-Security-Policy": "sandbox"}
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def reachable_host(host: str) -> str:
    """Where the console reaches a listener bound to ``host`` (any address -> loopback)."""
    return _ANY_ADDRESS.get(host, host)


class ProxyFailed(TorchferryError):
    """The inference listener could not be reached, or did not answer in time."""

    status_code = 502


class ProxyBusy(Overloaded):
    """Too many try-it calls at once."""


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
    return f"{settings.scheme}://{host_port(reachable_host(settings.host), settings.port)}"


class Forwarder:
    """One HTTP client per app (and event loop) for every try-it call."""

    def __init__(self, target: Callable[[], ServerSettings | None]) -> None:
        #: The settings the inference listener runs with (its real port); None: no
        #: listener this process knows (Ray Serve).
        self.target = target
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Calls in flight (one event loop: checked and counted with no await between).
        self.in_flight = 0

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

    @contextmanager
    def slot(self) -> Iterator[None]:
        """One of the ``MAX_CONCURRENT`` try-it calls (HTTP and gRPC alike), else ProxyBusy."""
        if self.in_flight >= MAX_CONCURRENT:
            raise ProxyBusy(f"try: {MAX_CONCURRENT} calls are being forwarded already; try again")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def forward(self, request: Request, path: str, route: str) -> Response:
        """Forward ``path`` (decoded, as routed: what is checked) as the client wrote it
        after ``route`` (the try route's own path, ``/console/api/try/``)."""
        try:
            inference_path(path)  # the decoded path: what the listener will route on
            with self.slot():
                answer = await self._forward(request, encoded_path(request.scope, route, path))
        except (ProxyFailed, ProxyUnsupported, ProxyBusy, InvalidInput) as exc:
            answer = triton_error(exc)
            answer.headers[PROXY_HEADER] = "error"
        answer.headers.update(ANSWER_HEADERS)
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
        body = await read_body(request, settings.max_body_bytes)
        wanted = {k.encode() for k in REQUEST_HEADERS}
        # the raw bytes, as the client sent them (a non-ASCII value stays the client's own)
        headers = [(k, v) for k, v in request.scope["headers"] if k.lower() in wanted]
        url = f"{base_url(settings)}/{path}"
        query = request.scope.get("query_string", b"").decode("latin-1")
        client = self._client_for(settings)
        started = time.perf_counter()
        try:
            call = client.build_request(
                "POST", url + (f"?{query}" if query else ""), content=body, headers=headers
            )
            answer = await client.send(call, stream=True)
            try:
                content = await _read_answer(answer)
            finally:
                await answer.aclose()
        except (httpx.InvalidURL, UnicodeError) as exc:
            raise InvalidInput(f"try: this request cannot be forwarded: {exc}") from None
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
        return Response(content, status_code=answer.status_code, headers=passed)


def encoded_path(scope: Scope, route: str, decoded: str) -> str:
    """The try path as the client encoded it (``raw_path`` after ``route``, under any
    prefix), so that an escape stays inside its segment; the decoded one, quoted, where
    there is no raw path."""
    raw = scope.get("raw_path")
    mark = route.encode()
    if isinstance(raw, bytes):
        raw = raw.split(b"?", 1)[0]
        at = raw.find(mark)
        if at >= 0:
            return raw[at + len(mark) :].decode("latin-1")
    return quote(decoded, safe="/")


async def _read_answer(answer: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in answer.aiter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise ProxyFailed(
                f"try: the answer is too large for the console (over {MAX_ANSWER_BYTES} "
                "bytes); send the request to the inference listener itself"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body(request: Request, limit: int) -> bytes:
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
