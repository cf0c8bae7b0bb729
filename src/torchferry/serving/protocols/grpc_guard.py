"""The gRPC server's limits and TLS, from the same settings as HTTP's.

- Messages: a request may be as large as an HTTP body (``--max-body-size``; over it,
  ``RESOURCE_EXHAUSTED``); answers are as large as the model makes them.
- Metadata: as large as HTTP headers (``--max-header-size``), as a hard limit (gRPC's soft
  limit would refuse calls between the two at random).
- Concurrency: ``--grpc-max-concurrent-streams`` calls at once on one connection (HTTP/2's
  ``SETTINGS_MAX_CONCURRENT_STREAMS``; a client queues the rest), ``--grpc-max-concurrent-rpcs``
  calls at once in one worker (more are refused with ``RESOURCE_EXHAUSTED``).
- Slow and idle clients: a connection must finish its TLS and HTTP/2 handshake within
  ``--header-timeout``; one without calls for ``--grpc-max-connection-idle`` is sent away
  (``GOAWAY``: the client reconnects when it next calls); a client that pings more often than
  ``--grpc-min-ping-interval`` without calls is sent away after two such pings; the server
  pings an idle client every ``--grpc-keepalive-time`` to find dead peers.
- TLS: the reloading material of ``tls.py``; gRPC asks for it before each handshake and
  gets new PEM bytes only after a reload. With a client CA, a client certificate is required.
"""

from __future__ import annotations

from typing import Any

import grpc

from torchferry.serving.settings import ServerSettings
from torchferry.serving.tls import ReloadingTLS, TLSMaterial


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def grpc_server_options(settings: ServerSettings, share_port: bool) -> list[tuple[str, Any]]:
    return [
        # tritonclient lifts its own limits to the maximum: the server's body limit decides
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        # answers are as large as the model makes them, as over HTTP
        ("grpc.max_send_message_length", -1),
        # else a port already taken fails loudly instead of being shared with another server
        ("grpc.so_reuseport", int(share_port)),
        ("grpc.max_metadata_size", settings.max_header_bytes),
        ("grpc.absolute_max_metadata_size", settings.max_header_bytes),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ("grpc.server_handshake_timeout_ms", _ms(settings.header_timeout_s)),
        ("grpc.max_connection_idle_ms", _ms(settings.grpc_max_connection_idle_s)),
        ("grpc.keepalive_time_ms", _ms(settings.grpc_keepalive_time_s)),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(settings.grpc_min_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", 2),
    ]


def _certificate_config(material: TLSMaterial) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.cert_chain)], root_certificates=material.client_ca
    )


def grpc_credentials(tls: ReloadingTLS) -> grpc.ServerCredentials:
    """Server credentials that follow ``tls``'s reloads: gRPC calls the fetcher before each
    new connection's handshake; it answers None (keep the current) until the files changed."""
    served = [tls.current()]

    def fetch() -> Any:
        material = tls.current()
        if material is served[0]:
            return None
        served[0] = material
        return _certificate_config(material)

    return grpc.dynamic_ssl_server_credentials(
        _certificate_config(served[0]), fetch, require_client_authentication=tls.mutual
    )
