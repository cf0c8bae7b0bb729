"""The listening sockets of ``serving/listen.py``: connections accepted from them go out
without Nagle's delay."""

from __future__ import annotations

import asyncio
import socket

from torchferry.serving.listen import listen_exclusive, listen_shared


async def _accepted_nodelay(sock: socket.socket) -> int:
    """TCP_NODELAY on the server side of a connection asyncio accepts from ``sock``."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[int] = loop.create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            raw = transport.get_extra_info("socket")
            accepted.set_result(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    server = await loop.create_server(Probe, sock=sock)
    host, port = sock.getsockname()[:2]
    _, writer = await asyncio.open_connection(host, port)
    try:
        return await asyncio.wait_for(accepted, 10)
    finally:
        writer.close()
        server.close()


def test_supervisor_listeners_accept_connections_without_nagle():
    """Found by fuzzing the management API: on a kept-alive connection every request after
    the first waited 40 ms (Nagle's algorithm meeting the client's delayed ACK), because
    asyncio sets TCP_NODELAY only on sockets whose protocol says TCP."""
    sock = listen_exclusive("127.0.0.1", 0, "test", "--test-port")
    assert asyncio.run(_accepted_nodelay(sock))


def test_worker_listeners_accept_connections_without_nagle():
    probe = listen_exclusive("127.0.0.1", 0, "test", "--test-port")
    port = probe.getsockname()[1]
    probe.close()
    assert asyncio.run(_accepted_nodelay(listen_shared("127.0.0.1", port)))
