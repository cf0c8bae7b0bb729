"""Server settings, from the command line or from Python."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from torchferry.cores import default_threads
from torchferry.errors import ArchiveError
from torchferry.serving.lifecycle.policy import VersionPolicy
from torchferry.serving.tls import ReloadingTLS, TLSFiles, download_context

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
#: Where ``--auth`` looks for its key file in a store (beside the persisted state).
KEY_FILE_DIR = ".torchferry"
KEY_FILE_NAME = "keys.json"
DEFAULT_MAX_DOWNLOAD_BYTES = 2 * 1024**3

DEFAULT_MAX_HEADER_BYTES = 32 * 1024


def key_file_path(key_file: Path | None, store: Path | None) -> Path | None:
    """The key file of ``serve --auth`` and ``torchferry token`` (one rule): as given, else
    ``STORE/.torchferry/keys.json``; None when neither is given."""
    if key_file is not None:
        return key_file
    return None if store is None else store / KEY_FILE_DIR / KEY_FILE_NAME


class ModelOverride(BaseModel):
    """Per-model settings given on the command line, which win over the manifest's defaults."""

    max_batch_size: int | None = Field(default=None, ge=1)
    max_delay_ms: float | None = Field(default=None, ge=0)
    mode: Literal["adaptive", "fixed"] | None = None
    max_latency_ms: float | None = Field(default=None, gt=0)
    instances: int | None = Field(default=None, ge=1)


def check_url_pattern(pattern: str) -> str:
    """An ``--allowed-urls`` pattern, or ValueError: the one rule, which the settings and
    the CLI (a usage error there) both apply."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
    return pattern


def check_url_network(network: str) -> str:
    """An ``--allow-url-network`` CIDR (``10.0.0.0/8``, host bits zero), or ValueError:
    the one rule, which the settings and the CLI (a usage error there) both apply."""
    try:
        ipaddress.ip_network(network, strict=True)
    except ValueError as exc:
        raise ValueError(f"{network!r} is not a network such as 10.0.0.0/8: {exc}") from None
    return network


class ServerSettings(BaseModel):
    store: Path | None = None
    #: A single model's folder served under ``model_name`` (TorchServe's command shape).
    model_dir: Path | None = None
    model_name: str | None = None
    #: Load only these models from the store (all when empty).
    models: list[str] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: KServe V2 over gRPC on this port (same host, same models and batchers); off when None.
    grpc_port: int | None = Field(default=7070, ge=0, le=65535)
    #: Intra-op threads per runtime; the machine's cores when unset.
    threads: int | None = Field(default=None, ge=1)
    device: str = "cpu"
    #: Serve this runtime instead of each manifest's default, where the archive has its graph.
    runtime: str | None = None
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1)
    #: Rows allowed to wait in one model's queue before requests are refused with 503.
    max_queue_rows: int = Field(default=4096, ge=1)
    #: Seconds a request may wait for its answer before 504; no limit when unset.
    request_timeout_s: float | None = Field(default=None, gt=0)
    #: Bytes of model engines each worker process keeps loaded (``--memory-budget``): with
    #: it, versions load on their first request and the least recently used idle ones are
    #: released to make room (``residency.py``); None loads every version at start, for good.
    memory_budget_bytes: int | None = Field(default=None, ge=1)
    #: ``early``: refuse (503) a request whose predicted answer would miss its deadline or
    #: the latency objective, once its model's batch cost is known; ``never``: run it anyway.
    shed: Literal["early", "never"] = "early"
    #: Batching for every model, then per model name.
    batching: ModelOverride = Field(default_factory=ModelOverride)
    per_model: dict[str, ModelOverride] = Field(default_factory=dict)
    log_level: str = "info"
    #: Log lines as readable text or as one JSON object per line.
    log_format: Literal["text", "json"] = "text"
    #: One line per request on the ``torchferry.access`` logger (at INFO).
    access_log: bool = True
    #: Worker processes serving the same ports, each with its own batchers and runtimes.
    workers: int = Field(default=1, ge=1)
    #: Seconds a drain (SIGTERM, SIGINT) waits for accepted requests before it stops them.
    drain_timeout_s: float = Field(default=30.0, gt=0)
    #: Keep one worker process started and waiting (the serving stack imported), so a
    #: crashed worker's replacement only loads its models; off saves that process's memory.
    warm_spare: bool = True
    #: Workers map one copy of each model's weights where the engine allows it (on the CPU:
    #: ONNX Runtime, ``runtimes/onnx_shared``; TorchScript and eager, ``torch_shared``);
    #: off, each worker loads its own.
    share_weights: bool = True
    #: Prometheus metrics (Triton's per-model counters, latency and batch histograms) on this
    #: port (same host), summed over the workers; no metrics when None.
    metrics_port: int | None = Field(default=8002, ge=0, le=65535)
    #: Set by the supervisor for its workers: listen with ``SO_REUSEPORT`` beside siblings.
    share_ports: bool = False
    #: The management API (TorchServe's, Triton's repository extension, traffic, rollouts)
    #: on this port; off when None.
    management_port: int | None = Field(default=8081, ge=0, le=65535)
    #: Where the management API listens; None is loopback. Another address must be given
    #: explicitly, and is logged as a warning.
    management_host: str | None = None
    #: Directories a management call may load models from (an archive folder, a ``.mar``,
    #: a ``.onnx``); the store when empty.
    model_source_roots: list[Path] = Field(default_factory=list)
    #: Look for new (and removed) version directories in the store this often; off when None.
    poll_store_s: float | None = Field(default=None, gt=0)
    #: Which versions of each model to load: for every model, then per model name.
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    model_version_policies: dict[str, VersionPolicy] = Field(default_factory=dict)

    @property
    def metrics(self) -> bool:
        return self.metrics_port is not None

    #: Run Python code that archives carry (custom handlers, eager models); off by default.
    trust_code: bool = False
    #: Send OpenTelemetry traces (needs the ``otel`` extra); configured by the ``OTEL_*``
    #: variables, and on without this flag when ``OTEL_TRACES_EXPORTER`` names an exporter.
    otel: bool = False

    # -- remote model sources (the management API's url=https://...) ------------------------
    #: Regular expressions; a remote URL is fetched only when one matches all of it, as
    #: normalized (``https://host[:port]/path[?query]``, host lowercased, port 443 dropped).
    #: None by default: every remote URL is refused.
    allowed_urls: list[str] = Field(default_factory=list)
    #: Networks (CIDR) a download may reach although they are not public: loopback, private,
    #: link-local... A cloud metadata address needs a network naming it alone (``/32``).
    allowed_url_networks: list[str] = Field(default_factory=list)
    #: The largest remote source fetched; a single ``.onnx`` cannot pass 2 GiB (protobuf's
    #: limit) and its external data cannot come along, so 2 GiB covers the ONNX form.
    max_download_bytes: int = Field(default=DEFAULT_MAX_DOWNLOAD_BYTES, ge=1)
    #: The whole download (every resolution, redirect and byte) within this many seconds.
    download_timeout_s: float = Field(default=300.0, gt=0)
    #: Extra CA certificates (PEM) trusted for downloads, besides the system's.
    url_ca_bundle: Path | None = None

    @field_validator("allowed_urls")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                check_url_pattern(pattern)
            except ValueError as exc:
                raise ValueError(f"--allowed-urls {exc}") from None
        return patterns

    @field_validator("allowed_url_networks")
    @classmethod
    def _networks_parse(cls, networks: list[str]) -> list[str]:
        for network in networks:
            try:
                check_url_network(network)
            except ValueError as exc:
                raise ValueError(f"--allow-url-network {exc}") from None
        return networks

    # -- TLS and limits against abuse, on every listener (docs/security.md) --------------
    #: The server's certificate chain and its unencrypted private key (PEM): TLS on every
    #: listener; reloaded when the files change.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Require client certificates signed by a CA in this PEM file (mutual TLS).
    tls_client_ca: Path | None = None
    #: Request line and headers of one HTTP request (431 past it); gRPC metadata likewise.
    max_header_bytes: int = Field(default=DEFAULT_MAX_HEADER_BYTES, ge=1024)
    #: Seconds a request's headers may take from its first byte (408 then); also the time a
    #: gRPC connection has for its TLS and HTTP/2 handshake.
    header_timeout_s: float = Field(default=10.0, gt=0)
    #: Seconds a request body may pause between two reads (408 then).
    body_timeout_s: float = Field(default=30.0, gt=0)
    #: Seconds an idle keep-alive HTTP connection stays open.
    keep_alive_timeout_s: float = Field(default=5.0, gt=0)
    #: Open HTTP connections per listener and process; a request on one more gets 503.
    max_connections: int = Field(default=1000, ge=1)
    #: gRPC calls at once on one connection (HTTP/2 streams; clients queue the rest).
    grpc_max_concurrent_streams: int = Field(default=100, ge=1)
    #: gRPC calls at once in one worker; more are refused with RESOURCE_EXHAUSTED.
    grpc_max_concurrent_rpcs: int = Field(default=1000, ge=1)
    #: A gRPC connection without calls this long is sent away (GOAWAY; clients reconnect).
    grpc_max_connection_idle_s: float = Field(default=300.0, gt=0)
    #: The server pings an idle gRPC client this often to find dead connections.
    grpc_keepalive_time_s: float = Field(default=7200.0, gt=0)
    #: Client pings closer than this without calls count as abuse (GOAWAY after two).
    grpc_min_ping_interval_s: float = Field(default=300.0, gt=0)

    def check_tls(self) -> None:
        """Fail before anything starts when the TLS options do not go together, or a file
        cannot be read or used (the error names it)."""
        files = TLSFiles.from_options(self.tls_cert, self.tls_key, self.tls_client_ca)
        if files is not None:
            ReloadingTLS(files)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"

    def policy_for(self, name: str) -> VersionPolicy:
        return self.model_version_policies.get(name, self.version_policy)

    def source_roots(self) -> list[Path]:
        """Where management loads may come from: the roots given, else the store."""
        if self.model_source_roots:
            return list(self.model_source_roots)
        return [self.store] if self.store is not None else []

    def resolved_threads(self) -> int:
        """Intra-op threads per runtime: as given, else the cores shared among the workers."""
        return self.threads or max(1, default_threads() // self.workers)

    def check_sources(self) -> None:
        """Fail before anything starts when the store or model folder cannot be served."""
        self.check_signing()
        if self.url_ca_bundle is not None:
            # an unreadable --url-ca-bundle is the operator's error, not a download's 502
            download_context(self.url_ca_bundle)
        if self.model_dir is not None:
            if not self.model_dir.is_dir():
                raise ArchiveError(f"model folder {self.model_dir} does not exist")
            return
        if self.store is None:
            raise ArchiveError(
                "no model store given (--store DIR, or --model-name and --model-dir)"
            )
        if not self.store.is_dir():
            raise ArchiveError(f"model store {self.store} does not exist")

    def batching_for(self, name: str) -> dict[str, Any]:
        """The batching fields that override a model's manifest, most specific last."""
        merged = self.batching.model_dump(exclude_none=True)
        if name in self.per_model:
            merged.update(self.per_model[name].model_dump(exclude_none=True))
        return merged

    # -- auth (bearer tokens with scopes) ----------------------------------------------------
    #: Every listener needs a bearer token whose scopes allow the call (health probes stay
    #: open); the tokens live in ``key_file``.
    auth: bool = False
    #: The key file (``torchferry token`` writes it); ``STORE/.torchferry/keys.json`` when
    #: unset.
    key_file: Path | None = None

    def key_path(self) -> Path:
        """The key file ``--auth`` reads: as given, else beside the store's state."""
        path = key_file_path(self.key_file, self.store)
        if path is None:
            raise ArchiveError(
                "--auth without a store needs --key-file PATH (the file 'torchferry token "
                "create --key-file PATH' writes)"
            )
        return path

    # -- signed models ---------------------------------------------------------------------
    #: Serve only archives signed (``model.sig``) by one of ``trusted_keys``: at start, on
    #: every management load and on store polling.
    require_signed: bool = False
    #: Public keys (PEM, EC P-256/384/521) whose signatures are accepted. Without
    #: ``require_signed``, signed archives are still verified against them (and refused when
    #: they fail) while unsigned ones are served.
    trusted_keys: list[Path] = Field(default_factory=list)

    def check_signing(self) -> None:
        """Fail before anything starts when signing is asked for but cannot be checked."""
        if self.require_signed and not self.trusted_keys:
            raise ArchiveError(
                "--require-signed needs at least one --trusted-key PUBLIC.pem to verify "
                "signatures with"
            )
        # cryptography only: the supervisor never imports model-signing
        from torchferry.signing_keys import read_trusted_keys

        read_trusted_keys(self.trusted_keys)
