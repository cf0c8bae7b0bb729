"""The generator's own ceiling: trivial endpoints that answer at once, in their own process.

Driving one of these with the same request, connections and processes as a real step tells
how many requests per second the generator itself can make on this machine. A step whose
measured rate comes near that ceiling measured the generator, not the server.

The endpoint runs as many processes as the generator has, all on one port (``SO_REUSEPORT``:
the kernel spreads the connections), so that one responder's event loop is not what the
ceiling measures on a machine with many cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from torchferry.loadtest.pool import Endpoint

#: A measured rate at this share of the ceiling or more is reported as generator-limited.
LIMITED_SHARE = 0.7

_ANSWER = b'{"ok":true}'
#: ``X-Responder`` names the process that answered (tests see the connections spread).
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Responder: "
    + str(os.getpid()).encode()
    + b"\r\nContent-Length: "
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


async def _serve_http(report: Connection, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(
        _Responder, "127.0.0.1", port, reuse_port=True
    )
    report.send(server.sockets[0].getsockname()[1])
    await server.serve_forever()


async def _serve_grpc(report: Connection, port: int) -> None:
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
    # gRPC sets SO_REUSEPORT on its listeners by default ("grpc.so_reuseport")
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    report.send(bound)
    await server.wait_for_termination()


def _responder_main(report: Connection, grpc: bool, port: int) -> None:
    from torchferry.loadtest.generator import run_loop

    serve = _serve_grpc if grpc else _serve_http
    run_loop(serve(report, port))


@contextlib.contextmanager
def trivial_endpoint(grpc: bool = False, processes: int = 1) -> Iterator[Endpoint]:
    """A trivial HTTP responder (or gRPC ``ModelInfer`` servicer) in ``processes`` processes
    of its own that share one port."""
    context = multiprocessing.get_context("spawn")
    started: list[multiprocessing.process.BaseProcess] = []

    def start(port: int) -> int:
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_responder_main, args=(send, grpc, port), daemon=True)
        process.start()
        send.close()  # so that a responder that dies reads as the end of the pipe
        started.append(process)
        if not receive.poll(60):
            raise RuntimeError("the calibration responder did not start within 60 s")
        try:
            bound = int(receive.recv())
        except EOFError:
            bound = 0
        if not bound:
            raise RuntimeError(f"the calibration responder could not bind port {port}")
        return bound

    try:
        port = start(0)
        for _ in range(max(1, processes) - 1):
            start(port)
        yield Endpoint("127.0.0.1", port, grpc=grpc)
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.join(10)
