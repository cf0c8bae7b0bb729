"""``torchferry serve``'s security options and the settings they give: tokens (``--auth``),
remote model sources, signed models, TLS and the limits against abuse (docs/security.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torchferry.cli.sizes import parse_size
from torchferry.serving.settings import (
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    check_url_network,
    check_url_pattern,
)


def parse_url_pattern(text: str) -> str:
    """An ``--allowed-urls`` regular expression, checked here so a typo is a usage error."""
    try:
        return check_url_pattern(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_network(text: str) -> str:
    """An ``--allow-url-network`` CIDR (``10.0.0.0/8``; host bits must be zero)."""
    try:
        return check_url_network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register_security(parser: argparse.ArgumentParser) -> None:
    """``serve``'s security argument groups."""
    _register_access(parser)
    _register_tls_and_limits(parser)


def _register_access(parser: argparse.ArgumentParser) -> None:
    auth = parser.add_argument_group("auth (bearer tokens with scopes)")
    auth.add_argument(
        "--auth",
        action="store_true",
        help="every call needs 'Authorization: Bearer <token>' whose scopes allow it (health "
        "probes stay open); tokens come from 'torchferry token create'",
    )
    auth.add_argument(
        "--key-file",
        type=Path,
        help="the key file --auth reads (default STORE/.torchferry/keys.json); re-read when "
        "it changes",
    )
    remote = parser.add_argument_group(
        "remote model sources",
        "management loads from https:// URLs (POST /models?url=https://...); off unless "
        "--allowed-urls is given",
    )
    remote.add_argument(
        "--allowed-urls",
        action="append",
        type=parse_url_pattern,
        default=[],
        metavar="REGEX",
        help="a regular expression a remote URL must match in full, as normalized: "
        "https://host[:port]/path[?query], host lowercased, port 443 dropped (repeatable; "
        r"e.g. 'https://models\.example\.com/.*\.mar')",
    )
    remote.add_argument(
        "--allow-url-network",
        action="append",
        type=parse_network,
        default=[],
        metavar="CIDR",
        help="let downloads reach this non-public network (loopback, private, link-local; a "
        "cloud metadata address only as a /32 or /128 of its own) (repeatable)",
    )
    remote.add_argument(
        "--max-download-size",
        type=parse_size,
        default=DEFAULT_MAX_DOWNLOAD_BYTES,
        metavar="SIZE",
        help="largest remote source fetched (default 2GiB)",
    )
    remote.add_argument(
        "--download-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="deadline for a whole download, redirects included (default 300)",
    )
    remote.add_argument(
        "--url-ca-bundle",
        type=Path,
        metavar="PEM",
        help="CA certificates trusted for downloads, besides the system's",
    )
    signing = parser.add_argument_group("signed models")
    signing.add_argument(
        "--require-signed",
        action="store_true",
        help="serve only archives signed (model.sig, torchferry sign) by a --trusted-key: "
        "at start, on management loads and on store polling",
    )
    signing.add_argument(
        "--trusted-key",
        action="append",
        type=Path,
        default=[],
        metavar="PUBLIC.pem",
        help="an EC public key whose signatures are accepted (repeatable; needed by "
        "--require-signed; without it, signed archives are still verified)",
    )


def _register_tls_and_limits(parser: argparse.ArgumentParser) -> None:
    tls = parser.add_argument_group(
        "TLS and limits against abuse", "on every listener: HTTP, gRPC, metrics, management"
    )
    tls.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="server certificate chain (PEM): serve TLS; reloaded when the file changes",
    )
    tls.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="the certificate's private key (PEM)"
    )
    tls.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="require client certificates signed by a CA in this PEM file (mutual TLS)",
    )
    tls.add_argument(
        "--max-header-size",
        type=parse_size,
        metavar="SIZE",
        default=DEFAULT_MAX_HEADER_BYTES,
        help="largest request line + headers (431 past it) and gRPC metadata (default 32KiB)",
    )
    tls.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a request's headers must arrive within this, else 408 and close; also bounds "
        "TLS handshakes and a gRPC connection's handshake (default 10)",
    )
    tls.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest pause while a request body arrives, else 408 and close (default 30)",
    )
    tls.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="idle keep-alive HTTP connections close after this (default 5)",
    )
    tls.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        default=1000,
        help="open HTTP connections per listener and worker; one more is answered 503 "
        "(default 1000)",
    )
    tls.add_argument(
        "--grpc-max-concurrent-streams",
        type=int,
        metavar="N",
        default=100,
        help="gRPC calls at once on one connection (default 100)",
    )
    tls.add_argument(
        "--grpc-max-concurrent-rpcs",
        type=int,
        metavar="N",
        default=1000,
        help="gRPC calls at once per worker; more get RESOURCE_EXHAUSTED (default 1000)",
    )
    tls.add_argument(
        "--grpc-max-connection-idle",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="send away gRPC connections without calls for this long (default 300)",
    )
    tls.add_argument(
        "--grpc-keepalive-time",
        type=float,
        default=7200.0,
        metavar="SECONDS",
        help="ping idle gRPC clients this often to find dead ones (default 7200)",
    )
    tls.add_argument(
        "--grpc-min-ping-interval",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="client pings closer than this without calls are abuse: GOAWAY after two "
        "(default 300)",
    )


def security_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``ServerSettings`` fields these options give."""
    return {
        "auth": args.auth,
        "key_file": args.key_file,
        "allowed_urls": args.allowed_urls,
        "allowed_url_networks": args.allow_url_network,
        "max_download_bytes": args.max_download_size,
        "download_timeout_s": args.download_timeout,
        "url_ca_bundle": args.url_ca_bundle,
        "require_signed": args.require_signed,
        "trusted_keys": args.trusted_key,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
        "max_header_bytes": args.max_header_size,
        "header_timeout_s": args.header_timeout,
        "body_timeout_s": args.body_timeout,
        "keep_alive_timeout_s": args.keep_alive_timeout,
        "max_connections": args.max_connections,
        "grpc_max_concurrent_streams": args.grpc_max_concurrent_streams,
        "grpc_max_concurrent_rpcs": args.grpc_max_concurrent_rpcs,
        "grpc_max_connection_idle_s": args.grpc_max_connection_idle,
        "grpc_keepalive_time_s": args.grpc_keepalive_time,
        "grpc_min_ping_interval_s": args.grpc_min_ping_interval,
    }
