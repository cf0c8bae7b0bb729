"""``torchferry token create|list|revoke``: the key file that ``torchferry serve --auth``
reads. A running server picks up every change within about a second, with no restart."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from torchferry.errors import InvalidInput
from torchferry.serving.auth.keyfile import (
    KeyFileError,
    Rate,
    create_token,
    read_key_file,
    revoke_token,
)
from torchferry.serving.auth.scopes import ScopeError, parse_scope
from torchferry.serving.settings import KEY_FILE_DIR, KEY_FILE_NAME, key_file_path

console = Console(soft_wrap=True)

_TTL = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DEFAULT_TTL = "30d"


def parse_ttl(text: str) -> timedelta | None:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w`` -> a duration; ``never`` -> None."""
    if text.strip().lower() == "never":
        return None
    match = _TTL.match(text.lower())
    if not match or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a lifetime such as 30m, 24h, 7d or never"
        )
    return timedelta(seconds=int(match.group(1)) * _TTL_UNITS[match.group(2)])


def parse_rate(text: str) -> float:
    """``10``, ``10/s``, ``600/m`` -> requests a second."""
    number, _, unit = text.strip().partition("/")
    per = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}.get(unit.strip().lower())
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if per is None or not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate such as 10/s or 600/m")
    return value / per


def _scope(text: str) -> str:
    try:
        return parse_scope(text)
    except ScopeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _where(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--store", type=Path, help=f"the model store (its key file: {KEY_FILE_DIR}/{KEY_FILE_NAME})"
    )
    where.add_argument("--key-file", type=Path, help="the key file itself")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "token",
        help="create, list and revoke the bearer tokens of 'serve --auth'",
        description="Manage the key file of 'torchferry serve --auth'. A running server "
        "reads every change within about a second.",
    )
    commands = parser.add_subparsers(dest="token_command", required=True)

    create = commands.add_parser(
        "create", help="add a token and print it (once: only its hash is kept)"
    )
    create.add_argument(
        "--scope",
        action="append",
        type=_scope,
        required=True,
        metavar="SCOPE",
        help="infer, infer:MODEL[,MODEL], metadata, manage or metrics (repeat for more)",
    )
    create.add_argument(
        "--ttl",
        type=parse_ttl,
        default=parse_ttl(DEFAULT_TTL),
        metavar="DURATION",
        help=f"lifetime: 30m, 24h, 7d, 2w or never (default {DEFAULT_TTL})",
    )
    create.add_argument("--name", help="what the token is for (shown by 'token list')")
    create.add_argument(
        "--rate", type=parse_rate, metavar="R[/s|/m]", help="at most R requests a second"
    )
    create.add_argument(
        "--burst", type=int, metavar="B", help="requests allowed at once with --rate (default R)"
    )
    _where(create)
    create.set_defaults(func=run_create)

    listing = commands.add_parser("list", help="the tokens (never their secrets)")
    _where(listing)
    listing.set_defaults(func=run_list)

    revoke = commands.add_parser("revoke", help="remove a token; servers refuse it within ~1 s")
    revoke.add_argument("id", metavar="ID", help="the token's id (see 'token list')")
    _where(revoke)
    revoke.set_defaults(func=run_revoke)


def key_file_of(args: argparse.Namespace) -> Path:
    path = key_file_path(args.key_file, args.store)
    if path is None:
        raise InvalidInput("name the key file: --store STORE or --key-file PATH")
    return path


def _key_error(exc: KeyFileError | ScopeError | ValueError) -> InvalidInput:
    return InvalidInput(str(exc))


def run_create(args: argparse.Namespace) -> int:
    path = key_file_of(args)
    if args.burst is not None and args.rate is None:
        raise InvalidInput("--burst needs --rate")
    if args.burst is not None and args.burst < 1:
        raise InvalidInput("--burst must be at least 1")
    rate = None
    if args.rate is not None:
        rate = Rate(args.rate, args.burst or max(1, round(args.rate)))
    try:
        entry, text = create_token(path, args.scope, args.ttl, args.name, rate)
    except (KeyFileError, ScopeError) as exc:
        raise _key_error(exc) from None
    expires = _when(entry.expires) if entry.expires else "never"
    console.print(
        f"created token [bold]{entry.id}[/] ({escape(', '.join(entry.scopes))}; expires "
        f"{expires}) in {escape(str(path))}"
    )
    console.print("the token (shown once, only its hash is kept):")
    print(text, flush=True)  # plain: no wrapping, no markup, easy to copy or capture
    console.print(
        "use it as 'Authorization: Bearer <token>' (gRPC: 'authorization' metadata), or "
        "export TORCHFERRY_TOKEN=<token> for the torchferry commands"
    )
    return 0


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else "never"


def run_list(args: argparse.Namespace) -> int:
    path = key_file_of(args)
    try:
        entries = read_key_file(path)
    except KeyFileError as exc:
        raise _key_error(exc) from None
    now = datetime.now(UTC)
    table = Table(title=f"tokens in {path}")
    table.add_column("id", no_wrap=True)
    for column in ("name", "scopes", "expires", "expired", "rate"):
        table.add_column(column)
    for entry in entries.values():
        rate = f"{entry.rate.per_second:g}/s burst {entry.rate.burst}" if entry.rate else ""
        table.add_row(
            entry.id,
            escape(entry.name or ""),
            escape(" ".join(entry.scopes)),
            _when(entry.expires),
            "yes" if entry.expired(now) else "no",
            rate,
        )
    console.print(table)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    path = key_file_of(args)
    try:
        removed = revoke_token(path, args.id)
    except KeyFileError as exc:
        raise _key_error(exc) from None
    if removed is None:
        raise InvalidInput(f"no token {args.id!r} in {path} (see 'torchferry token list')")
    console.print(
        f"revoked token {removed.id}; servers reading {escape(str(path))} refuse it within ~1 s"
    )
    return 0
