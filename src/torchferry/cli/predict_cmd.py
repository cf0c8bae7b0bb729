"""``torchferry predict``: send one request to a running server and print the answer."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import orjson
from rich.console import Console

from torchferry.client import Client
from torchferry.errors import InvalidInput

console = Console()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="send one request to a running server",
        description=(
            "--json FILE sends a V2 request (with 'inputs'), a V1 request (with 'instances' "
            "or columnar 'inputs' as an object) or a /predict body (with 'data'); --npy sends "
            "arrays over V2; --image sends an image to /predict."
        ),
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument(
        "--token", help="bearer token for a server run with --auth (default: $TORCHFERRY_TOKEN)"
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--version")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--json", type=Path, metavar="FILE")
    source.add_argument("--npy", action="append", metavar="NAME=FILE.npy")
    source.add_argument("--image", type=Path, metavar="FILE")
    parser.set_defaults(func=run)


def _route_for(body: object, model: str, version: str | None) -> str:
    versioned = f"{model}/versions/{version}" if version else model
    if isinstance(body, dict) and isinstance(body.get("inputs"), list):
        return f"/v2/models/{versioned}/infer"
    if isinstance(body, dict) and ("instances" in body or "inputs" in body):
        return f"/v1/models/{versioned}:predict"
    if isinstance(body, dict) and "data" in body:
        return f"/predict/{versioned}"
    raise InvalidInput("the JSON file has none of 'inputs' (V2), 'instances' (V1) or 'data'")


def run(args: argparse.Namespace) -> int:
    with Client(args.url, token=args.token) as client:
        if args.json is not None:
            body = orjson.loads(args.json.read_bytes())
            answer: object = client.send(_route_for(body, args.model, args.version), body)
        elif args.npy:
            arrays = {}
            for item in args.npy:
                name, _, path = item.partition("=")
                if not path:
                    raise InvalidInput(f"--npy {item!r}: expected NAME=FILE.npy")
                arrays[name] = np.load(path, allow_pickle=False)
            outputs = client.infer(args.model, arrays, version=args.version)
            answer = {name: array.tolist() for name, array in outputs.items()}
        else:
            model = f"{args.model}/versions/{args.version}" if args.version else args.model
            answer = {"result": client.predict(model, image=args.image)}
    console.print_json(orjson.dumps(answer).decode())
    return 0
