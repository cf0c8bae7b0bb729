"""``torchferry serve``: load a model store and serve it over HTTP and gRPC."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from torchferry.cli import err_console
from torchferry.cli.serve_devices import register_devices, runtime_device_conflict
from torchferry.cli.serve_security import register_security, security_settings
from torchferry.cli.sizes import parse_size
from torchferry.serving.lifecycle.policy import VersionPolicy
from torchferry.serving.settings import DEFAULT_MAX_BODY_BYTES, ModelOverride, ServerSettings

if TYPE_CHECKING:
    from torchferry.ray.config import Autoscaling
    from torchferry.serving.model_dir import ServedSource


BATCHING_KEYS = "max_batch_size=N,max_delay_ms=F,mode=adaptive|fixed,max_latency_ms=F,instances=N"


def parse_model_batching(text: str) -> tuple[str | None, ModelOverride]:
    """``NAME:max_batch_size=16,max_delay_ms=5`` -> per-model batching override;
    ``fixed`` or ``adaptive`` alone -> the mode of every model (name None)."""
    if text in ("fixed", "adaptive"):
        return None, ModelOverride.model_validate({"mode": text})
    name, _, rest = text.partition(":")
    if not name or not rest:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected fixed, adaptive or NAME:{BATCHING_KEYS}"
        )
    fields: dict[str, str] = {}
    for item in rest.split(","):
        key, _, value = item.partition("=")
        fields[key.strip()] = value.strip()
    try:
        return name, ModelOverride.model_validate(fields)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def parse_budget(text: str) -> int:
    """``--memory-budget``: a size above zero."""
    size = parse_size(text)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a memory budget must be above zero")
    return size


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
    # --model_name, --model_dir, --http_port, --grpc_port: KServe's spellings (docs/kserve.md)
    parser.add_argument(
        "--model-name",
        "--model_name",
        help="the name to serve --model-dir's model as (KServe: the InferenceService's name)",
    )
    parser.add_argument(
        "--model-dir",
        "--model_dir",
        type=Path,
        help="one model's folder: an archive, numbered versions, a model store, a TorchServe "
        "layout (config/config.properties + model-store/*.mar, or *.mar) or a model.onnx; "
        ".mar and .onnx are imported into --store, else a temporary store",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", "--rest-port", "--http_port", dest="port", type=int, default=8080)
    grpc = parser.add_mutually_exclusive_group()
    grpc.add_argument(
        "--grpc-port",
        "--grpc_port",
        type=int,
        default=7070,
        help="KServe V2 gRPC port (default 7070; 0 picks a free one)",
    )
    grpc.add_argument("--no-grpc", action="store_true", help="serve no gRPC")
    parser.add_argument("--threads", type=int, help="intra-op threads per model (default: cores)")
    register_devices(parser)
    parser.add_argument("--max-batch-size", type=int, help="batching for every model")
    parser.add_argument("--max-delay-ms", type=float, help="batching for every model")
    parser.add_argument(
        "--batching",
        action="append",
        type=parse_model_batching,
        default=[],
        metavar="fixed|adaptive|NAME:KEY=VALUE,...",
        help="the batching mode of every model (adaptive by default), or batching for one "
        f"model: NAME:{BATCHING_KEYS} (repeatable; docs/batching.md)",
    )
    parser.add_argument(
        "--max-latency-ms",
        type=float,
        help="latency objective of every model: adaptive batching waits no longer, and "
        "requests that would miss it are shed (default: none)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        help="model instances per worker, each with threads / N intra-op threads (default 1)",
    )
    parser.add_argument(
        "--shed",
        choices=["early", "never"],
        default="early",
        help="early (default): refuse with 503 a request predicted to miss its deadline or "
        "the latency objective; never: run it anyway",
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
        "--memory-budget",
        type=parse_budget,
        metavar="SIZE",
        help="model memory per worker process (such as 2GiB): versions load on their first "
        "request, and the least recently used idle ones are unloaded to make room "
        "(default: every version loaded at start)",
    )
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
    parser.add_argument(
        "--no-warm-spare",
        dest="warm_spare",
        action="store_false",
        help="keep no worker process waiting to replace a crashed one (saves its memory, "
        "~100 MB; a replacement then starts a cold interpreter, ~1.5 s more)",
    )
    parser.add_argument(
        "--no-share-weights",
        dest="share_weights",
        action="store_false",
        help="each worker loads its own copy of every model's weights (by default workers "
        "map one shared copy on the CPU: ONNX Runtime, TorchScript and eager)",
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
    parser.set_defaults(func=run, check_arguments=runtime_device_conflict)
    register_security(parser)
    register_ray(parser)


def register_ray(parser: argparse.ArgumentParser) -> None:
    ray = parser.add_argument_group(
        "Ray Serve", "serve through Ray Serve's proxy instead (needs torchferry[ray])"
    )
    ray.add_argument(
        "--ray",
        action="store_true",
        help="run the server as a Ray Serve application: replicas behind Serve's HTTP proxy "
        "on --host/--port (the store must be on a path every Ray node sees)",
    )
    scaling = ray.add_mutually_exclusive_group()
    scaling.add_argument("--replicas", type=int, help="replicas (default 1)")
    scaling.add_argument(
        "--autoscale",
        type=parse_autoscale,
        metavar="MIN:MAX",
        help="let Serve scale between MIN and MAX replicas",
    )
    ray.add_argument(
        "--ray-address",
        help="join this Ray cluster (auto, ray://HOST:10001) instead of starting one here",
    )
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per replica (1)")
    ray.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs per replica (0)")


def parse_autoscale(text: str) -> Autoscaling:
    """``MIN:MAX`` replicas -> Serve's autoscaling, checked by its own rules (the settings
    module imports no Ray)."""
    from pydantic import ValidationError

    from torchferry.ray.config import Autoscaling, validation_reason

    low, sep, high = text.partition(":")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected MIN:MAX replicas, such as 1:4")
    try:
        return Autoscaling(min_replicas=int(low), max_replicas=int(high))
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {validation_reason(exc)}") from None


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    policies = dict(args.version_policy)
    default_policy = policies.pop(None, None) or VersionPolicy()
    modes = [override.mode for name, override in args.batching if name is None]
    per_model = {name: override for name, override in args.batching if name is not None}
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
        memory_budget_bytes=args.memory_budget,
        shed=args.shed,
        batching=ModelOverride(
            max_batch_size=args.max_batch_size,
            max_delay_ms=args.max_delay_ms,
            max_latency_ms=args.max_latency_ms,
            instances=args.instances,
            mode=modes[-1] if modes else None,
        ),
        per_model=per_model,
        log_level=args.log_level,
        log_format=args.log_format,
        access_log=not args.no_access_log,
        trust_code=args.trust_code,
        workers=args.workers,
        drain_timeout_s=args.drain_timeout,
        warm_spare=args.warm_spare,
        share_weights=args.share_weights,
        metrics_port=None if args.no_metrics else args.metrics_port,
        otel=args.otel,
        management_port=None if args.no_management else args.management_port,
        management_host=args.management_host,
        model_source_roots=args.model_source_root,
        poll_store_s=args.poll_store,
        version_policy=default_policy,
        model_version_policies=policies,
        **security_settings(args),
    )


def run(args: argparse.Namespace) -> int:
    if args.ray:
        return run_on_ray(args)
    from torchferry.serving.server import serve

    if args.model_dir is None:
        return serve(settings_from_args(args))
    from torchferry.serving.model_dir import LayoutError, mounted

    try:
        with mounted(args.model_dir, args.model_name, args.store) as source:
            report_imports(source)
            served = {"store": source.store, "model_dir": source.model_dir}
            return serve(settings_from_args(args).model_copy(update=served))
    except LayoutError as exc:  # a usage error, like argparse's
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
        return 2


def report_imports(source: ServedSource) -> None:
    """One line per imported file: KServe's pod log says what each name serves."""
    for name, version, file in source.imported:
        err_console.print(f"imported {escape(file)} as {escape(name)} version {version}")
    if source.imported:
        err_console.print(f"serving the imported models from the store {source.store}")


def run_on_ray(args: argparse.Namespace) -> int:
    if args.workers != 1:
        err_console.print(
            "[bold red]error:[/] --workers does not apply with --ray: use --replicas N"
        )
        return 2
    try:
        from pydantic import ValidationError

        from torchferry.ray import RaySettings, serve_on_ray
        from torchferry.ray.config import validation_reason
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] != "ray":
            raise
        err_console.print(
            "[bold red]error:[/] --ray needs Ray Serve: " + escape("pip install 'torchferry[ray]'")
        )
        return 2
    try:
        settings = RaySettings(
            num_replicas=args.replicas,
            autoscaling=args.autoscale,
            num_cpus=args.replica_cpus,
            num_gpus=args.replica_gpus,
            management=not args.no_management,
            server=settings_from_args(args),
        )
        if args.ray_address is not None:  # a running Serve keeps its proxies, where they are
            settings.check_management_guarded(f"the proxies of the Serve at {args.ray_address}")
    except ValidationError as exc:
        err_console.print(f"[bold red]error:[/] {escape(validation_reason(exc))}")
        return 2
    except ValueError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 2
    return serve_on_ray(settings, args.ray_address)
