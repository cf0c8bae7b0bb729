"""``torchferry serve``: load a model store and serve it over HTTP and gRPC."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from torchferry.serving.lifecycle.policy import VersionPolicy
from torchferry.serving.settings import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    ModelOverride,
    ServerSettings,
    check_url_network,
    check_url_pattern,
)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """``64MiB``, ``10m``, ``1048576`` -> bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 64MiB or 1048576")
    unit = (match.group(2) or "").lower()[:1]
    return int(float(match.group(1)) * _UNITS[unit])


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


def parse_model_batching(text: str) -> tuple[str, ModelOverride]:
    """``NAME:max_batch_size=16,max_delay_ms=5`` -> per-model batching override."""
    name, _, rest = text.partition(":")
    if not name or not rest:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:max_batch_size=N,max_delay_ms=F")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        key, _, value = item.partition("=")
        fields[key.strip()] = value.strip()
    try:
        return name, ModelOverride.model_validate(fields)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def parse_version_policy(text: str) -> tuple[str | None, VersionPolicy]:
    """``[MODEL=]POLICY`` -> (model or None for every model, policy)."""
    model, _, policy = text.rpartition("=")
    if "=" in text and not model.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected [MODEL=]all|latest:N|specific:V,V")
    try:
        return (model.strip() or None), VersionPolicy.parse(policy)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model store over HTTP and gRPC",
        description="Serve every model and version in a store (or one model's folder).",
    )
    parser.add_argument("--store", type=Path, help="model store directory (STORE/NAME/VERSION/)")
    parser.add_argument("--model", action="append", default=[], help="serve only this model")
    parser.add_argument("--model-name", help="TorchServe style: the name to serve --model-dir as")
    parser.add_argument("--model-dir", type=Path, help="TorchServe style: one model's folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", "--rest-port", dest="port", type=int, default=8080)
    grpc = parser.add_mutually_exclusive_group()
    grpc.add_argument(
        "--grpc-port",
        type=int,
        default=7070,
        help="KServe V2 gRPC port (default 7070; 0 picks a free one)",
    )
    grpc.add_argument("--no-grpc", action="store_true", help="serve no gRPC")
    parser.add_argument("--threads", type=int, help="intra-op threads per model (default: cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtime", help="serve this runtime where archives have its graph")
    parser.add_argument("--max-batch-size", type=int, help="batching for every model")
    parser.add_argument("--max-delay-ms", type=float, help="batching for every model")
    parser.add_argument(
        "--batching",
        action="append",
        type=parse_model_batching,
        default=[],
        metavar="NAME:max_batch_size=N,max_delay_ms=F",
        help="batching for one model (repeatable)",
    )
    parser.add_argument(
        "--max-body-size",
        type=parse_size,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body (default 64MiB)",
    )
    parser.add_argument("--max-queue-rows", type=int, default=4096)
    parser.add_argument("--request-timeout", type=float, help="seconds before 504")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes serving the same ports (default 1); threads default to "
        "cores / workers",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds a drain (SIGTERM, SIGINT) waits for accepted requests (default 30)",
    )
    metrics = parser.add_mutually_exclusive_group()
    metrics.add_argument(
        "--metrics-port",
        type=int,
        default=8002,
        help="Prometheus /metrics on this port, same host (default 8002; 0 picks a free one)",
    )
    metrics.add_argument("--no-metrics", action="store_true", help="serve no metrics")
    management = parser.add_mutually_exclusive_group()
    management.add_argument(
        "--management-port",
        type=int,
        default=8081,
        help="management API (TorchServe's, Triton's repository extension, traffic, "
        "rollouts) on this port (default 8081; 0 picks a free one)",
    )
    management.add_argument("--no-management", action="store_true", help="no management API")
    parser.add_argument(
        "--management-host",
        help="where the management API listens (default: loopback only; any other address "
        "lets whoever reaches it change the models, and is logged as a warning)",
    )
    parser.add_argument(
        "--model-source-root",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="a folder management calls may load models from (repeatable; default: the store)",
    )
    parser.add_argument(
        "--poll-store",
        type=float,
        metavar="SECONDS",
        help="look for new and removed versions in the store this often (default: never)",
    )
    parser.add_argument(
        "--version-policy",
        action="append",
        type=parse_version_policy,
        default=[],
        metavar="[MODEL=]POLICY",
        help="which store versions to load: all (default), latest:N or specific:V1,V2; "
        "MODEL= for one model, else every model (repeatable)",
    )
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="log lines as text, or one JSON object per line (default text)",
    )
    parser.add_argument(
        "--no-access-log", action="store_true", help="no line per request (torchferry.access)"
    )
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="run Python code that archives carry (custom handlers, eager models)",
    )
    parser.add_argument(
        "--otel",
        action="store_true",
        help="send OpenTelemetry traces, configured by the OTEL_* variables (OTLP by default; "
        "needs torchferry[otel]; on without this flag when OTEL_TRACES_EXPORTER is set)",
    )
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
    parser.set_defaults(func=run)
    _register_tls_and_limits(parser)


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


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    policies = dict(args.version_policy)
    default_policy = policies.pop(None, None) or VersionPolicy()
    return ServerSettings(
        store=args.store,
        models=args.model,
        model_name=args.model_name,
        model_dir=args.model_dir,
        host=args.host,
        port=args.port,
        grpc_port=None if args.no_grpc else args.grpc_port,
        threads=args.threads,
        device=args.device,
        runtime=args.runtime,
        max_body_bytes=args.max_body_size,
        max_queue_rows=args.max_queue_rows,
        request_timeout_s=args.request_timeout,
        batching=ModelOverride(max_batch_size=args.max_batch_size, max_delay_ms=args.max_delay_ms),
        per_model=dict(args.batching),
        log_level=args.log_level,
        log_format=args.log_format,
        access_log=not args.no_access_log,
        trust_code=args.trust_code,
        workers=args.workers,
        drain_timeout_s=args.drain_timeout,
        metrics_port=None if args.no_metrics else args.metrics_port,
        otel=args.otel,
        management_port=None if args.no_management else args.management_port,
        management_host=args.management_host,
        model_source_roots=args.model_source_root,
        poll_store_s=args.poll_store,
        version_policy=default_policy,
        model_version_policies=policies,
        auth=args.auth,
        key_file=args.key_file,
        allowed_urls=args.allowed_urls,
        allowed_url_networks=args.allow_url_network,
        max_download_bytes=args.max_download_size,
        download_timeout_s=args.download_timeout,
        url_ca_bundle=args.url_ca_bundle,
        require_signed=args.require_signed,
        trusted_keys=args.trusted_key,
        **_tls_and_limits(args),
    )


def _tls_and_limits(args: argparse.Namespace) -> dict[str, Any]:
    return {
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


def run(args: argparse.Namespace) -> int:
    from torchferry.serving.server import serve

    return serve(settings_from_args(args))
