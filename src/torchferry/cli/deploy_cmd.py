"""``torchferry deploy`` and ``torchferry rollout``: change the models of a running server
through its management API, for people and for CI pipelines.

- ``deploy PATH --url MGMT --name NAME``: register PATH (an archive folder, a ``.mar``, a
  ``.onnx``) as the next version of NAME, then make it the default at once, or with
  ``--rollout 10,25,50,100`` move traffic to it step by step while the server watches its
  error rate and latency, and follow that until it ends;
- ``rollout MGMT NAME --to V``: the same rollout, of a version already loaded.

Exit codes: 0 deployed (promoted), 3 rolled back or aborted (the reason is printed), 1 a
call was refused or the server could not be reached (the server's message is printed),
2 a bad command line.
"""

from __future__ import annotations

import argparse
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from torchferry.bearer import auth_headers
from torchferry.serving.lifecycle.state import RolloutSpec

console = Console(soft_wrap=True)

EXIT_DEPLOYED = 0
EXIT_REFUSED = 1
EXIT_ROLLED_BACK = 3
#: Rollout phases that are still moving.
_RUNNING = ("pending", "stepping")


class Refused(Exception):
    """A management call failed; the message is the server's (or why it was not reached)."""


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected percentages such as 10,25,50,100"
        ) from None
    try:  # the server's own rule, checked before anything is registered
        RolloutSpec(version=1, steps=steps)
    except ValidationError as exc:
        reason = "; ".join(str(error["msg"]) for error in exc.errors())
        raise argparse.ArgumentTypeError(f"{text!r}: {reason}") from None
    return steps


def _rollout_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("rollout checks (the server's defaults when not given)")
    group.add_argument("--interval", type=float, metavar="S", help="seconds per step (30)")
    group.add_argument(
        "--max-error-rate", type=float, metavar="F", help="largest canary server-error rate (0.01)"
    )
    group.add_argument("--max-p99-ms", type=float, metavar="F", help="largest canary p99 latency")
    group.add_argument(
        "--max-p99-ratio", type=float, metavar="F", help="largest canary p99 / stable p99"
    )
    group.add_argument(
        "--min-requests", type=int, metavar="N", help="canary requests before a step is judged"
    )
    group.add_argument(
        "--min-agreement",
        type=float,
        metavar="F",
        help="first mirror traffic to the new version and require this argmax agreement",
    )
    group.add_argument("--shadow-share", type=float, metavar="F", help="share mirrored (1.0)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        metavar="S",
        help="give up after S seconds (default 1800); a rollout still running then is aborted "
        "and traffic goes back to the stable version (exit 3)",
    )
    parser.add_argument(
        "--token",
        help="bearer token with the manage scope, for a server run with --auth "
        "(default: $TORCHFERRY_TOKEN)",
    )
    # how often the rollout is polled; tests shorten it
    parser.add_argument("--poll-interval", type=float, default=1.0, help=argparse.SUPPRESS)


def register(subparsers: argparse._SubParsersAction) -> None:
    deploy = subparsers.add_parser(
        "deploy",
        help="register a model version on a running server, then make it the default",
        description="Register PATH as the next version of NAME through the management API "
        "and make it the default, at once or by a rollout. Exit codes: 0 deployed, 3 rolled "
        "back or aborted, 1 refused or unreachable.",
    )
    deploy.add_argument("path", metavar="PATH", help="archive folder, .mar or .onnx")
    deploy.add_argument("--url", required=True, help="management API, e.g. http://127.0.0.1:8081")
    deploy.add_argument("--name", required=True, help="the model's name")
    deploy.add_argument(
        "--rollout",
        type=parse_steps,
        metavar="10,25,50,100",
        help="move traffic to the new version in these percentages (ending at 100)",
    )
    _rollout_options(deploy)
    _tls_options(deploy)
    deploy.set_defaults(func=run_deploy)

    rollout = subparsers.add_parser(
        "rollout",
        help="move a model's traffic to a loaded version step by step",
        description="Start a canary rollout of version V of NAME and follow it. Exit codes: "
        "0 promoted, 3 rolled back or aborted, 1 refused or unreachable.",
    )
    rollout.add_argument("url", metavar="URL", help="management API, e.g. http://127.0.0.1:8081")
    rollout.add_argument("name", metavar="NAME")
    rollout.add_argument("--to", type=int, required=True, metavar="V", help="the new version")
    rollout.add_argument(
        "--steps", type=parse_steps, metavar="10,25,50,100", help="canary percentages"
    )
    rollout.add_argument(
        "--no-wait", action="store_true", help="start it and exit (0) without following it"
    )
    _rollout_options(rollout)
    _tls_options(rollout)
    rollout.set_defaults(func=run_rollout)


def _tls_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS (a server started with --tls-cert)")
    group.add_argument("--cacert", type=Path, help="trust the server's certificate by this CA")
    group.add_argument("--client-cert", type=Path, help="present this certificate (mutual TLS)")
    group.add_argument("--client-key", type=Path, help="the client certificate's private key")


def _verify(args: argparse.Namespace) -> ssl.SSLContext | bool:
    """httpx's ``verify``: the system's CAs unless ``--cacert``, plus a client certificate."""
    if args.cacert is None and args.client_cert is None:
        return True
    try:
        context = ssl.create_default_context(cafile=args.cacert)
        if args.client_cert is not None:
            context.load_cert_chain(args.client_cert, args.client_key)
    except (OSError, ssl.SSLError) as exc:
        raise Refused(f"cannot use the TLS files: {exc}") from None
    return context


# -- calls ----------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> httpx.Client:
    headers = auth_headers(args.token)
    return httpx.Client(
        base_url=args.url, timeout=args.timeout, headers=headers, verify=_verify(args)
    )


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TimeoutException:
        raise Refused(f"{method} {path}: no answer from {client.base_url} in time") from None
    except httpx.HTTPError as exc:
        raise Refused(f"cannot reach {client.base_url}: {exc}") from None
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = None
    if response.is_success:
        return body
    message = None
    if isinstance(body, dict):
        message = body.get("message") or body.get("error")
    raise Refused(f"{method} {path} -> {response.status_code}: {message or response.text}")


def _spec(args: argparse.Namespace, version: int, steps: list[int] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"version": version}
    if steps is not None:
        spec["steps"] = steps
    options = {
        "interval_s": args.interval,
        "max_error_rate": args.max_error_rate,
        "max_p99_ms": args.max_p99_ms,
        "max_p99_ratio": args.max_p99_ratio,
        "min_requests": args.min_requests,
        "min_agreement": args.min_agreement,
        "shadow_share": args.shadow_share,
    }
    spec.update({k: v for k, v in options.items() if v is not None})
    return spec


def _figures(figures: dict[str, Any]) -> str:
    text = f"{figures.get('requests', 0)} requests, error rate {figures.get('error_rate', 0):.4f}"
    if figures.get("p99_ms") is not None:
        text += f", p99 {figures['p99_ms']:.1f} ms"
    if figures.get("agreement") is not None:
        text += f", agreement {figures['agreement']:.4f}"
    return text


def _show(decision: dict[str, Any], steps: int) -> None:
    verdict = decision.get("verdict", "?")
    colour = {"advance": "cyan", "promote": "green"}.get(verdict, "red")
    step = decision.get("step", -1)
    where = "shadow check" if step < 0 else f"step {step + 1}/{steps} at {decision.get('weight')}%"
    console.print(
        f"[{colour}]{verdict}[/] {where}: {escape(str(decision.get('reason', '')))} "
        f"[dim](canary: {escape(_figures(decision.get('canary') or {}))})[/]"
    )


def _follow(client: httpx.Client, name: str, args: argparse.Namespace, deadline: float) -> int:
    """Print each decision of NAME's rollout until it ends; its exit code."""
    shown = 0
    while True:
        status = _call(client, "GET", f"/models/{name}/rollout")
        steps = len(status["spec"]["steps"])
        for decision in status.get("history", [])[shown:]:
            _show(decision, steps)
        shown = len(status.get("history", []))
        phase = status["phase"]
        if phase not in _RUNNING:
            reason = escape(str(status.get("reason") or phase))
            if phase == "promoted":
                console.print(f"[bold green]promoted[/] version {status['spec']['version']}")
                return EXIT_DEPLOYED
            console.print(f"[bold red]{phase.replace('_', ' ')}[/]: {reason}")
            console.print(f"traffic is back on version {status['stable']}")
            return EXIT_ROLLED_BACK
        if time.monotonic() > deadline:
            aborted = _call(client, "POST", f"/models/{name}/rollout/abort")
            console.print(
                f"[bold red]timed out[/] after {args.timeout:g} s: rollout aborted, traffic is "
                f"back on version {aborted['stable']}"
            )
            return EXIT_ROLLED_BACK
        time.sleep(args.poll_interval)


def _start(
    client: httpx.Client, name: str, args: argparse.Namespace, spec: dict[str, Any]
) -> dict[str, Any]:
    status: dict[str, Any] = _call(client, "POST", f"/models/{name}/rollouts", json=spec)
    console.print(
        f"rollout of {escape(name)} version {spec['version']} started (stable: version "
        f"{status['stable']}, steps {status['spec']['steps']})"
    )
    return status


def _reported(function: Any) -> Any:
    """Runs a command; a refused call prints the server's message and exits 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(function(args))
        except Refused as exc:
            console.print(f"[bold red]refused:[/] {escape(str(exc))}")
            return EXIT_REFUSED

    return run


def _source(path: str) -> str:
    # a path on this machine is sent absolute; anything else as given (the server resolves
    # it under its source roots)
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else path


@_reported
def run_deploy(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    name = args.name
    with _client(args) as client:
        params = {"url": _source(args.path), "model_name": name, "synchronous": "true"}
        registered = _call(client, "POST", "/models", params=params)
        version = int(registered["modelVersion"])
        console.print(f"registered {escape(name)} version {version}")
        described = _call(client, "GET", f"/models/{name}/all")
        others = [
            int(d["modelVersion"])
            for d in described
            if int(d["modelVersion"]) != version and d.get("state", "ready") == "ready"
        ]
        if args.rollout is None or not others:
            if args.rollout is not None:
                console.print(f"no other version of {escape(name)} serves: no rollout needed")
            _call(client, "PUT", f"/models/{name}/{version}/set-default")
            console.print(
                f"[bold green]deployed[/]: {escape(name)} version {version} is the default"
            )
            return EXIT_DEPLOYED
        _start(client, name, args, _spec(args, version, args.rollout))
        return _follow(client, name, args, deadline)


@_reported
def run_rollout(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    with _client(args) as client:
        _start(client, args.name, args, _spec(args, args.to, args.steps))
        if args.no_wait:
            return EXIT_DEPLOYED
        return _follow(client, args.name, args, deadline)
