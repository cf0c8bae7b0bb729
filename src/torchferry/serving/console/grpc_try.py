"""The console's try-it over KServe V2 gRPC (``POST /console/api/try-grpc/{model}``): a
browser cannot speak gRPC, so the page sends V2's JSON request to its own origin and this
module makes the gRPC call to a worker's listener, answering V2's JSON answer.

The caller's ``Authorization`` header goes as ``authorization`` metadata (the gRPC listener
checks the ``infer`` scope itself). The answer carries ``X-Request-ID`` and
``X-Model-Version`` from the call's trailing metadata, ``X-Torchferry-Latency-Ms`` and
``X-Torchferry-Grpc-Status`` (the status code's name); a gRPC error is answered with the
HTTP status its code maps to and ``{"error": details, "grpc_status": NAME}``. Imported only
when the route is first used: grpcio is not loaded by a console that never calls it."""

from __future__ import annotations

import struct
import time

import grpc
from grpc import aio
from starlette.requests import Request
from starlette.responses import Response

from torchferry.codecs.jsonio import loads
from torchferry.serving.console.grpc_tensors import infer_request, response_json
from torchferry.serving.console.proxy import (
    DEFAULT_READ_TIMEOUT_S,
    LATENCY_HEADER,
    Forwarder,
    ProxyFailed,
    ProxyUnsupported,
    reachable_host,
    read_body,
)
from torchferry.serving.console.server_view import ServerView
from torchferry.serving.listen import host_port
from torchferry.serving.management.answers import JSONResponse
from torchferry.serving.protos.inference_pb2_grpc import GRPCInferenceServiceStub
from torchferry.serving.settings import ServerSettings

GRPC_STATUS_HEADER = "X-Torchferry-Grpc-Status"
#: Request headers passed on as metadata.
METADATA_HEADERS = ("authorization", "x-request-id", "x-traffic-key")
#: Trailing metadata passed back as headers.
TRAILING_HEADERS = {
    "x-request-id": "X-Request-ID",
    "x-model-version": "X-Model-Version",
    "retry-after": "Retry-After",
}
#: A gRPC status code -> the HTTP status torchferry's errors give the same fault
#: (``torchferry/errors.py``); RESOURCE_EXHAUSTED is the queue's 503 (a token's rate also
#: maps there: gRPC cannot tell them apart), and anything unknown is the gateway's 502.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "FAILED_PRECONDITION": 409,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "UNIMPLEMENTED": 501,
    "RESOURCE_EXHAUSTED": 503,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
NO_GRPC = "try-grpc: the server has no gRPC listener (it runs with --no-grpc)"
NEEDS_PLAINTEXT = (
    "Try it over gRPC needs a plaintext gRPC listener: the server's gRPC listener uses TLS, "
    "and the console cannot check its certificate; use another protocol, or your own gRPC "
    "client"
)


def grpc_target(settings: ServerSettings) -> str:
    """The worker's gRPC listener, as the console reaches it (any-address -> loopback)."""
    if settings.grpc_port is None:
        raise ProxyUnsupported(NO_GRPC)
    if settings.tls_cert is not None:
        raise ProxyUnsupported(NEEDS_PLAINTEXT)
    return host_port(reachable_host(settings.host), settings.grpc_port)


async def try_grpc(
    request: Request, model: str, server: ServerView | None, forwarder: Forwarder
) -> Response:
    """Answer one try-it call over gRPC, in one of the forwarder's slots (errors the
    console's users cause raise, and the route answers them as ``{"error"}``)."""
    with forwarder.slot():
        return await _try_grpc(request, model, server)


async def _try_grpc(request: Request, model: str, server: ServerView | None) -> Response:
    if server is None:
        raise ProxyUnsupported(
            "try-it is not forwarded under Ray Serve: send the request to Serve's proxy"
        )
    settings = server.worker_settings
    target = grpc_target(settings)
    body = await read_body(request, settings.max_body_bytes)
    parsed = loads(body, "try-grpc: the body")
    message = infer_request(parsed, model, request.query_params.get("version"))
    metadata = tuple((k, v) for k in METADATA_HEADERS if (v := request.headers.get(k)))
    timeout = settings.request_timeout_s or DEFAULT_READ_TIMEOUT_S
    # our own listener, so no size limit on what comes back; one channel per call, as the
    # HTTP forwarder keeps no idle connection (one would hold up a worker's drain)
    options = [
        ("grpc.max_send_message_length", settings.max_body_bytes + 4096),
        ("grpc.max_receive_message_length", -1),
        ("grpc.enable_http_proxy", 0),
    ]
    started = time.perf_counter()
    async with aio.insecure_channel(target, options=options) as channel:
        call = GRPCInferenceServiceStub(channel).ModelInfer(
            message, metadata=metadata, timeout=timeout
        )
        try:
            response = await call
            trailing = await call.trailing_metadata()
        except aio.AioRpcError as exc:
            headers = _headers(exc.trailing_metadata(), exc.code(), started)
            name = exc.code().name
            status = HTTP_STATUS.get(name, 502)
            return JSONResponse(
                {"error": exc.details() or name, "grpc_status": name},
                status_code=status,
                headers=headers,
            )
    headers = _headers(trailing, grpc.StatusCode.OK, started)
    try:
        answer = response_json(response)
    except (struct.error, ValueError) as exc:
        raise ProxyFailed(f"try-grpc: the gRPC answer cannot be read: {exc}") from None
    return JSONResponse(answer, headers=headers)


def _headers(
    trailing: aio.Metadata | None, code: grpc.StatusCode, started: float
) -> dict[str, str]:
    latency_ms = (time.perf_counter() - started) * 1000.0
    headers = {LATENCY_HEADER: f"{latency_ms:.3f}", GRPC_STATUS_HEADER: code.name}
    for key, value in trailing or ():
        if key in TRAILING_HEADERS and isinstance(value, str):
            headers[TRAILING_HEADERS[key]] = value
    return headers
