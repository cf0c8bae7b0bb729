"""The ``torchferry`` command: thin argument parsing over the library.

Each subcommand is a module with ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.markup import escape

from torchferry._version import __version__
from torchferry.errors import TorchferryError

#: Subcommand modules under ``torchferry.cli``; a new command is a new module plus a line here.
COMMANDS = [
    "export_cmd",
    "import_cmd",
    "inspect_cmd",
    "serve_cmd",
    "predict_cmd",
    "optimize_cmd",
    "deploy_cmd",
    "token_cmd",
    "sign_cmd",
    "bench_cmd",
]

#: Errors are one line each, never wrapped at the terminal's width: a wrapped path or
#: message no longer matches a grep (or a test), and logs are read by machines.
err_console = Console(stderr=True, soft_wrap=True)


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose command may check its arguments together once all are read
    (``set_defaults(check_arguments=FUNCTION)``, ``FUNCTION(namespace)`` returning an error
    message or None): a ``type=`` sees one argument, and a flag's default is never given
    to it. A message is a usage error, as argparse's own (exit 2)."""

    # the subcommand's parser is called through this method, not parse_args; typeshed's
    # overloads of it (a caller's own namespace type) are more than this needs
    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        check: Callable[[argparse.Namespace], str | None] | None = getattr(
            parsed, "check_arguments", None
        )
        message = check(parsed) if check is not None else None
        if message is not None:
            self.error(message)
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="torchferry", description="Export, optimize and serve PyTorch models."
    )
    parser.add_argument("--version", action="version", version=f"torchferry {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMANDS:
        module = importlib.import_module(f"torchferry.cli.{module_name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TorchferryError as exc:
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
