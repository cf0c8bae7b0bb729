"""``torchferry import FILE.onnx|FILE.pt``: bring a foreign model file into a store."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from torchferry.cli.export_cmd import add_archive_options, archive_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import",
        help="import a .onnx or TorchScript .pt file into a model store",
        description=(
            "Copy an ONNX graph (signature read from the graph) or a TorchScript file "
            "(give --input specs; outputs are found by running it once) into STORE/NAME/VERSION."
        ),
    )
    parser.add_argument("file", type=Path, metavar="FILE.onnx|FILE.pt")
    add_archive_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from torchferry.archive.importer import import_model
    from torchferry.cli.inspect_cmd import tensors_table

    console = Console()
    settings = archive_settings(args)
    archive = import_model(
        args.file,
        name=args.name,
        store=args.store,
        version=args.version,
        inputs=args.inputs,
        output_names=args.output_names,
        handler=args.handler,
        **settings,
    )
    manifest = archive.manifest
    console.print(tensors_table("inputs", manifest.signature.inputs))
    console.print(tensors_table("outputs", manifest.signature.outputs))
    console.print(
        f"imported {args.file.name} as [bold]{manifest.name}[/] version {manifest.version} "
        f"to {archive.path} (runtime {manifest.runtime})"
    )
    return 0
