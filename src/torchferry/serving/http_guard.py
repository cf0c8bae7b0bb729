"""uvicorn's httptools protocol with the limits it lacks, and the one uvicorn configuration
every HTTP listener uses (worker, metrics, management): TLS and these limits.

uvicorn (httptools, llhttp) bounds neither the size of a request's headers nor the time
they take to arrive, and arms its keep-alive timer only after a response, so a client that
connects and sends nothing, or trickles a request line a byte at a time (slowloris), holds
a connection and a file descriptor forever. Here:

- **Header size**: the request line and headers together may take ``max_header_bytes``;
  more gets ``431`` and the connection closes. Counted as the parser hands them over, and
  as raw bytes while the headers are incomplete, so one endless header cannot grow the
  parser's buffer either.
- **Header timeout**: a request's headers must be complete ``header_timeout_s`` after its
  first byte (after the connection opened, for its first request); else ``408`` and close.
- **Body timeout**: while a request's body arrives, ``body_timeout_s`` may pass between two
  reads (not while the server itself holds reading back); else ``408`` and close.
- **Connections**: past ``max_connections`` open connections on one listener of one process,
  a new connection's request gets ``503`` with ``Retry-After`` and the connection closes;
  the open ones keep being served (uvicorn's ``limit_concurrency`` would refuse requests on
  every connection, old ones included).
- **Idle TLS closes**: a connection closed between requests (keep-alive timeout, a drain)
  does not wait for the client's TLS close_notify, which an idle client never sends.

The clock checks are lazy: a request only stamps the time; the one timer per connection
re-arms itself for what is left when it fires early. Refusals log nothing above DEBUG (an
attack must not flood the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from dataclasses import dataclass
from typing import Any, Literal

import httptools
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from torchferry.serving.listen import QuietServer
from torchferry.serving.settings import ServerSettings
from torchferry.serving.tls import ReloadingTLS, TLSFiles

log = logging.getLogger("torchferry.http")

Phase = Literal["headers", "body"] | None


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_connections=settings.max_connections,
        )


class _Refusal(Exception):
    """Raised from a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class GuardedConfig(uvicorn.Config):
    """uvicorn's configuration with the limits for ``GuardedHttpProtocol`` and, with TLS,
    the reloading server context."""

    def __init__(
        self, app: Any, limits: HttpLimits, tls: ReloadingTLS | None = None, **kwargs: Any
    ) -> None:
        if tls is not None:
            kwargs["ssl_context_factory"] = lambda config, default: tls.server_context()
        super().__init__(app, http=GuardedHttpProtocol, **kwargs)
        self.limits = limits


def http_config(app: Any, settings: ServerSettings, **kwargs: Any) -> GuardedConfig:
    """The uvicorn configuration of an HTTP listener: the settings' TLS and limits (the
    TLS files are read here: a bad one fails the start with its name)."""
    files = TLSFiles.from_options(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    return GuardedConfig(
        app,
        HttpLimits.from_settings(settings),
        ReloadingTLS(files) if files is not None else None,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        **kwargs,
    )


class GuardedServer(QuietServer):
    """uvicorn's server on listening sockets that its caller made, with the header timeout
    as the TLS handshake's deadline: uvicorn leaves asyncio's 60 s, during which a client
    that connects and never says hello holds a connection no limit here counts (the
    protocol is only made once the handshake is done)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        config = self.config
        if sockets is None or not isinstance(config, GuardedConfig):
            await super().startup(sockets)
            return
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return GuardedHttpProtocol(config, self.server_state, self.lifespan.state, _loop)

        loop = asyncio.get_running_loop()
        handshake = config.limits.header_timeout_s if config.ssl is not None else None
        self.servers = [
            await loop.create_server(
                create_protocol,
                sock=sock,
                ssl=config.ssl,
                backlog=config.backlog,
                ssl_handshake_timeout=handshake,
            )
            for sock in sockets
        ]
        self.started = True


def _answer(status: int, message: str, retry_after: int | None = None) -> bytes:
    body = ('{"error":"' + message.replace('"', "'") + '"}').encode()
    lines = [
        STATUS_LINE[status],
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n",
    ]
    if retry_after is not None:
        lines.append(b"retry-after: " + str(retry_after).encode() + b"\r\n")
    return b"".join([*lines, b"\r\n", body])


class GuardedHttpProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        assert isinstance(config, GuardedConfig), "GuardedHttpProtocol needs a GuardedConfig"
        self.limits = config.limits
        self._phase: Phase = None
        #: When the phase began (headers) or last made progress (body), by the loop's clock.
        self._since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._raw_header_bytes = 0
        self._headers_completed = False
        self._over_limit = False

    # -- the connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # counted before it joins: the open connections keep their service
        self._over_limit = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        self._begin("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        before = self._phase
        self._headers_completed = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refusal):
                refusal = exc.__context__
                self._refuse(refusal.status, refusal.message, refusal.retry_after)
            else:
                self._invalid()
            return
        except httptools.HttpParserUpgrade:  # as uvicorn does: no upgrade is served here
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        # headers still incomplete: this chunk is all theirs when no message ended in it
        if self._phase == "headers" and before != "body" and not self._headers_completed:
            self._raw_header_bytes += len(data)
            if self._raw_header_bytes > self.limits.max_header_bytes:
                self._refuse(431, self._too_large())

    def shutdown(self) -> None:
        """uvicorn's, called by its shutdown (a drain), with the idle close below."""
        if self.cycle is None or self.cycle.response_complete:
            self._close_idle()
        else:
            self.cycle.keep_alive = False

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self._close_idle()

    def _close_idle(self) -> None:
        """Close a connection between requests. Over TLS, asyncio (and uvloop) send
        close_notify and then wait up to 30 s for the client's, which a keep-alive client
        that is not reading never sends: the connection stays open all that time, holding a
        drain and counting against the connection limit. A TLS server need not wait (RFC 8446
        6.1), so once nothing is left to encrypt, reading is shut: the end of input ends the
        wait, and the TCP transport closes after its buffer has gone out (no answer is cut
        short, as it would be by ``abort``)."""
        self.transport.close()
        if self.scheme != "https" or self.transport.get_write_buffer_size():
            return  # an answer still being encrypted: asyncio's wait, as before
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return
        # uvloop's socket object cannot shut down: a duplicate of its descriptor can
        with (
            contextlib.suppress(OSError),
            socket.fromfd(sock.fileno(), sock.family, sock.type) as duplicate,
        ):
            duplicate.shutdown(socket.SHUT_RD)

    def _invalid(self) -> None:
        self.logger.debug("invalid HTTP request received")
        self._refuse(400, "invalid HTTP request")

    def _refuse(self, status: int, message: str, retry_after: int | None = None) -> None:
        self._phase = None
        if not self.transport.is_closing():
            self.transport.write(_answer(status, message, retry_after))
            self.transport.close()

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._raw_header_bytes = 0
        if self._phase != "headers":  # the first request's clock runs since the connection
            self._begin("headers")

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._over_limit:
            raise _Refusal(
                503,
                f"this server has {self.limits.max_connections} connections open: retry later",
                retry_after=1,
            )
        self._headers_completed = True
        self._begin("body")
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._since = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = None
        super().on_message_complete()

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            raise _Refusal(431, self._too_large())

    def _too_large(self) -> str:
        return (
            f"request headers exceed {self.limits.max_header_bytes} bytes "
            "(the server's --max-header-size)"
        )

    # -- the clock -----------------------------------------------------------------------------

    def _begin(self, phase: Phase) -> None:
        self._phase = phase
        self._since = self.loop.time()
        deadline = self._since + self._timeout()
        # a timer left for a later deadline (a body's, longer than the headers') would let
        # this phase run past its own: a timer that fires early only re-arms, one that
        # fires late is the bug
        if self._timer is not None and self._timer.when() > deadline:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _timeout(self) -> float:
        if self._phase == "headers":
            return self.limits.header_timeout_s
        return self.limits.body_timeout_s

    def _on_timer(self) -> None:
        self._timer = None
        if self._phase is None or self.transport.is_closing():
            return
        left = self._since + self._timeout() - self.loop.time()
        if left <= 0 and self._waits_on_us():
            self._since, left = self.loop.time(), self._timeout()
        if left > 0:
            self._timer = self.loop.call_later(left, self._on_timer)
            return
        log.debug("closing a connection whose request %s did not arrive in time", self._phase)
        # Only a late body has its own request's answer to mind: late headers belong to the
        # next request, the cycle is the previous one's (finished, or ``_waits_on_us``).
        cycle = self.cycle
        if self._phase == "body" and cycle is not None and cycle.response_started:
            if not cycle.response_complete:  # answering already: let the answer finish
                self._timer = self.loop.call_later(self._timeout(), self._on_timer)
                return
            self.transport.close()  # answered without the body: no second answer
            return
        self._refuse(408, f"the request's {self._phase} did not arrive in time")

    def _waits_on_us(self) -> bool:
        """Whether the stall is the server's: an earlier pipelined request is still being
        answered, or reading is paused until the app takes what it was sent."""
        if self._phase == "headers":
            return self.cycle is not None and not self.cycle.response_complete
        return self.flow is not None and self.flow.read_paused
