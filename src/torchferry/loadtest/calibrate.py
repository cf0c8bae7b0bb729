"""The generator's own ceiling: trivial endpoints that answer at once, in their own process.

Driving one of these with the same request, connections and processes as a real step tells
how many requests per second the generator itself can make on this machine. A step whose
measured rate comes near that ceiling measured the generator, not the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from torchferry.loadtest.pool import Endpoint

#: A measured rate at this share of the ceiling or more is reported as generator-limited.
LIMITED_SHARE = 0.7

_ANSWER = b'{"ok":true}'
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(_ANSWER)).encode()
    + b"\r\n\r\n"
    + _ANSWER
)


class _Responder(asyncio.Protocol):
    """Answers every complete HTTP/1.1 request (``Content-Length`` bodies) with ``_RESPONSE``."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answers = 0
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in bytes(self.buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                break
            del self.buffer[: end + 4 + length]
            answers += 1
        if answers and self.transport is not None:
            self.transport.write(_RESPONSE * answers)


async def _serve_http(report: Connection) -> None:
    server = await asyncio.get_running_loop().create_server(_Responder, "127.0.0.1", 0)
    report.send(server.sockets[0].getsockname()[1])
    await server.serve_forever()


async def _serve_grpc(report: Connection) -> None:
    import grpc
    from grpc import aio

    async def answer(request: bytes, context: aio.ServicerContext) -> bytes:
        return b""

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(answer)},
    )
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    server = aio.server(options=options)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    report.send(port)
    await server.wait_for_termination()


def _responder_main(report: Connection, grpc: bool) -> None:
    from torchferry.loadtest.generator import run_loop

    run_loop(_serve_grpc(report) if grpc else _serve_http(report))  # type: ignore[arg-type]


@contextlib.contextmanager
def trivial_endpoint(grpc: bool = False) -> Iterator[Endpoint]:
    """A trivial HTTP responder (or gRPC ``ModelInfer`` servicer) in its own process."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_responder_main, args=(send, grpc), daemon=True)
    process.start()
    try:
        if not receive.poll(60):
            raise RuntimeError("the calibration responder did not start within 60 s")
        yield Endpoint("127.0.0.1", int(receive.recv()), grpc=grpc)
    finally:
        process.terminate()
        process.join(10)
