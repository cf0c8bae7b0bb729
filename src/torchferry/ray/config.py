"""What a Ray Serve deployment of torchferry is: the server's own settings (store, models,
batching, auth...) and Serve's (replicas or autoscaling, each replica's CPUs and GPUs).

Plain pydantic, no Ray: the CLI and the config-file builder both parse into ``RaySettings``,
and a bad value is refused with the field it concerns before anything starts."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from torchferry.errors import InvalidInput
from torchferry.serving.listen import is_loopback
from torchferry.serving.settings import ServerSettings

#: What Serve's gRPC proxy imports to learn KServe V2's service (``grpc_proxy.py``).
GRPC_SERVICER_FUNCTION = (
    "torchferry.serving.protos.inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
)
#: The application's (and its deployment's) name unless told otherwise.
APP_NAME = "torchferry"


class Autoscaling(BaseModel):
    """Serve's autoscaling: between ``min_replicas`` and ``max_replicas``, aiming at
    ``target_ongoing_requests`` requests in each replica."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(ge=1)
    #: Higher than Serve's default (2): a replica batches, and batching needs a queue.
    target_ongoing_requests: float = Field(default=8.0, gt=0)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"autoscaling min_replicas {self.min_replicas} is above max_replicas "
                f"{self.max_replicas}"
            )
        return self


class RaySettings(BaseModel):
    """One torchferry application on Ray Serve."""

    model_config = ConfigDict(extra="forbid")

    #: The Serve application's name, and its deployment's.
    name: str = APP_NAME
    route_prefix: str = "/"
    #: A fixed number of replicas (1 when neither this nor ``autoscaling`` is given).
    num_replicas: int | None = Field(default=None, ge=1)
    autoscaling: Autoscaling | None = None
    #: Each replica's share of a node (Ray's ``ray_actor_options``).
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    #: Requests Serve sends one replica at once; the rest wait in Serve's queue. Batching
    #: coalesces only what a replica holds, so this is far above Serve's default (5).
    max_ongoing_requests: int = Field(default=64, ge=1)
    #: Any new value restarts every replica (a rolling update) although nothing else
    #: changed, e.g. to serve the versions added to the store since (Serve restarts
    #: replicas when their arguments change, and this is one of them).
    revision: str | None = None
    #: Extra replicas a rolling update may start before it stops old ones, in percent of
    #: ``num_replicas`` (Serve's ``max_surge_percent``; 0: stop one, then start one).
    max_surge_percent: int = Field(default=0, ge=0, le=100)
    #: A manager application (``NAME-manage`` at ``ROUTE_PREFIX/manage``) that serves the
    #: management API and makes each change in every replica.
    management: bool = True
    server: ServerSettings

    @model_validator(mode="after")
    def _one_scaling(self) -> RaySettings:
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("give num_replicas or autoscaling, not both")
        return self

    @model_validator(mode="after")
    def _management_guarded(self) -> RaySettings:
        if not is_loopback(self.server.host):
            self.check_management_guarded(f"Serve's proxy on {self.server.host}")
        return self

    @model_validator(mode="after")
    def _a_store(self) -> RaySettings:
        # a model folder is laid out for one machine (and .mar/.onnx/store layouts are
        # imported by the CLI first): the replicas load a store every node sees
        if self.server.model_dir is not None:
            raise ValueError(
                "--model-dir (model_dir) is not served on Ray: put the model in a store on a "
                "path every Ray node sees (torchferry import or export write one) and give "
                "--store"
            )
        return self

    @model_validator(mode="after")
    def _tls_as_serve_does_it(self) -> RaySettings:
        """Serve's HTTP proxy serves HTTPS from a certificate and key; it never asks for
        client certificates (uvicorn's ``ssl_cert_reqs`` is not among Serve's options), and
        its gRPC proxy has no TLS at all."""
        server = self.server
        if server.tls_client_ca is not None:
            raise ValueError(
                "mutual TLS (--tls-client-ca) is not available on Ray: Serve's proxy does not "
                "ask clients for certificates"
            )
        if server.tls_cert is not None and server.grpc_port is not None:
            raise ValueError(
                "Serve's gRPC proxy has no TLS: with --tls-cert on Ray, serve no gRPC "
                "(--no-grpc), or leave TLS to a load balancer in front of Serve"
            )
        return self

    def check_management_guarded(self, proxy: str) -> None:
        """Management on Ray answers on Serve's proxy port, not on a loopback listener of its
        own, and the Host-name check (``management/guard.py``) is no protection against a
        client that sends ``Host: localhost``: where the proxy is not known to listen on
        loopback only, tokens are the API's only guard. ``proxy`` says where it listens."""
        if self.management and not self.server.auth:
            raise ValueError(
                f"the management API on Ray answers on {proxy}, which any client that reaches "
                "it could use to change the models: turn on tokens (--auth; auth: true in a "
                "Serve config file) or switch management off (--no-management; "
                "management: false)"
            )

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments of Serve's ``Deployment.options``."""
        options: dict[str, Any] = {
            "name": self.name,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            # a store that cannot be served fails the same way every time: fail fast
            "max_constructor_retry_count": 3,
            # a replica drains like a worker: its batchers' queues are answered first
            "graceful_shutdown_timeout_s": self.server.drain_timeout_s,
            "max_surge_percent": self.max_surge_percent,
            # one line per request is torchferry's access log's job, when it is on
            "logging_config": {"enable_access_log": not self.server.access_log},
        }
        if self.autoscaling is not None:
            options["autoscaling_config"] = self.autoscaling.model_dump()
        else:
            options["num_replicas"] = self.num_replicas or 1
        return options

    def proxy_options(self) -> dict[str, Any]:
        """``serve.start``'s options: Serve's HTTP proxy on the server's host and port, and
        its gRPC proxy hosting KServe V2 on the server's gRPC port (none when that is off).
        They apply where Serve is not running yet (Serve keeps a running cluster's)."""
        http: dict[str, Any] = {"host": self.server.host, "port": self.server.port}
        if self.server.tls_cert is not None and self.server.tls_key is not None:
            http["ssl_certfile"] = str(self.server.tls_cert)
            http["ssl_keyfile"] = str(self.server.tls_key)
        options: dict[str, Any] = {"http_options": http}
        if self.server.grpc_port is not None:
            options["grpc_options"] = {
                "port": self.server.grpc_port,
                "grpc_servicer_functions": [GRPC_SERVICER_FUNCTION],
            }
        return options

    @property
    def manager_name(self) -> str:
        return f"{self.name}-manage"

    @property
    def manager_route(self) -> str:
        return self.route_prefix.rstrip("/") + "/manage"

    def manager_settings(self) -> ServerSettings:
        """The manager's: the server's own (its store, policies, poller, auth)."""
        return self.server.model_copy(update={"workers": 1})

    def replica_settings(self) -> ServerSettings:
        """What each replica serves: the server's settings, less what Serve does instead
        (its proxy listens; there is one process per replica, no gRPC listener of our own,
        no metrics or management listener in a replica). Intra-op threads default to the
        replica's CPUs."""
        server = self.server
        threads = server.threads or max(1, math.ceil(self.num_cpus))
        return server.model_copy(
            update={
                "threads": threads,
                "workers": 1,
                "share_ports": False,
                "grpc_port": None,
                "metrics_port": None,
                "management_port": None,
                "poll_store_s": None,
            }
        )


def validation_reason(exc: ValidationError) -> str:
    """The first thing pydantic refused, as one line: `field: why`."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def settings_from_args(args: dict[str, Any] | None) -> RaySettings:
    """A Serve config file's ``args`` (flat): Serve's fields (``num_replicas``,
    ``autoscaling``, ``num_cpus``...) and the server's (``store``, ``models``,
    ``batching``...) side by side. An unknown key is refused (InvalidInput), not ignored."""
    args = dict(args or {})
    ray_fields = set(RaySettings.model_fields) - {"server"}
    server_fields = set(ServerSettings.model_fields)
    unknown = sorted(set(args) - ray_fields - server_fields - {"server"})
    if unknown:
        raise InvalidInput(
            f"unknown torchferry.ray:app argument(s) {', '.join(unknown)}: expected Ray "
            f"settings ({', '.join(sorted(ray_fields))}) or server settings (store, models, "
            "batching, ...)"
        )
    tls = sorted(key for key in ("tls_cert", "tls_key", "tls_client_ca") if key in args)
    if tls:
        raise InvalidInput(
            f"torchferry.ray:app argument(s) {', '.join(tls)}: Serve's proxy terminates TLS; "
            "set ssl_certfile and ssl_keyfile in the config file's http_options"
        )
    ray_args = {key: args.pop(key) for key in list(args) if key in ray_fields}
    server_args = dict(args.pop("server", None) or {})
    server_args.update(args)
    try:
        settings = RaySettings(**ray_args, server=ServerSettings.model_validate(server_args))
        # the proxy's address is the config file's http_options, which a builder never sees
        settings.check_management_guarded("Serve's proxy (the config file's http_options)")
    except ValidationError as exc:
        raise InvalidInput(f"torchferry.ray:app arguments: {validation_reason(exc)}") from None
    except ValueError as exc:
        raise InvalidInput(f"torchferry.ray:app arguments: {exc}") from None
    return settings
