"""Listening sockets that several worker processes share with ``SO_REUSEPORT``.

The kernel spreads new connections over every worker's own listening socket. Two traps
come with that option, and both are closed here: a second server started on a port that
is already served would silently share its traffic, and port 0 would give each worker a
different port. So the supervisor first binds each port *without* the option (a taken
port fails loudly), resolves port 0 to a real port, then holds it with a bound,
never-listening socket (``PortGuard``) for as long as it runs, so that nothing else can
take the port while a worker restarts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from torchferry.errors import TorchferryError

#: Connections the kernel queues for each worker before refusing more.
BACKLOG = 2048


class PortInUse(TorchferryError):
    status_code = 500


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _tcp_socket(host: str) -> socket.socket:
    """A TCP socket that says so (``IPPROTO_TCP``, not 0): asyncio sets ``TCP_NODELAY`` only
    on connections accepted from such a socket. Without it the supervisor's listeners (plain
    asyncio; workers run uvloop, which sets it anyway) met Nagle and delayed ACKs: every
    request after the first on a kept-alive connection waited 40 ms."""
    return socket.socket(_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP)


@dataclass
class PortGuard:
    host: str
    port: int
    sock: socket.socket

    def close(self) -> None:
        self.sock.close()


def _bind_exclusive(host: str, port: int, what: str, flag: str) -> socket.socket:
    """A socket bound to ``host:port`` without ``SO_REUSEPORT``: a port another server holds
    fails here, with a message naming the listener (``what``) and its option (``flag``)."""
    sock = _tcp_socket(host)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "taken"
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUse(
            f"cannot listen for {what} on {host}:{port}: {exc.strerror or exc}. "
            f"Is another server running there? Choose another port with {flag} N"
        ) from None
    return sock


def reserve(host: str, port: int, what: str, flag: str) -> PortGuard:
    """Check that ``host:port`` is free, resolve port 0, and hold the port for workers."""
    with _bind_exclusive(host, port, what, flag) as probe:
        port = int(probe.getsockname()[1])
    guard = _tcp_socket(host)
    guard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    guard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    guard.bind((host, port))
    return PortGuard(host, port, guard)


def listen_exclusive(host: str, port: int, what: str, flag: str) -> socket.socket:
    """A listening socket of the supervisor's own (the metrics listener), not shared."""
    sock = _bind_exclusive(host, port, what, flag)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the supervisor or the worker's drain decides
    when it stops (uvicorn's handlers would also re-raise the signal after shutdown)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen_shared(host: str, port: int) -> socket.socket:
    """A worker's own listening socket on a port its siblings share."""
    sock = _tcp_socket(host)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


#: Where a listener goes unless told otherwise.
LOOPBACK = "127.0.0.1"


def host_port(host: str, port: int | None) -> str:
    """``host:port``, an IPv6 host in brackets (``[::1]:8081``), as gRPC targets, URLs and
    log lines write it."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
