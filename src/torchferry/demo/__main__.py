"""``python -m torchferry.demo build|curl``: build the demo model, or print a request to it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torchferry.demo.digits import DEFAULT_URL, build_demo, curl_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torchferry.demo",
        description="Build the digits demo model, or print a curl line that queries it.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="train the digits model and export it to a store")
    build.add_argument("--store", type=Path, default=Path("model-store"))
    build.add_argument(
        "--force", action="store_true", help="export a new version even if one exists"
    )
    build.add_argument("--seed", type=int, default=0)
    curl = commands.add_parser("curl", help="print a curl line that queries the served model")
    curl.add_argument("--url", default=DEFAULT_URL, help=f"server address (default {DEFAULT_URL})")
    curl.add_argument("--index", type=int, default=0, help="which test digit to send")
    args = parser.parse_args(argv)

    if args.command == "build":
        build_demo(args.store, force=args.force, seed=args.seed)
    else:
        line, label = curl_command(args.url, args.index)
        print(
            f"# a held-out test digit, truly a {label}; paste this once the server is up:",
            file=sys.stderr,
        )
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
