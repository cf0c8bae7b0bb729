"""``torchferry import FILE.onnx|FILE.pt|FILE.mar|FILE.keras|FILE.h5|SAVED_MODEL_DIR``: bring a
foreign model into a store."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from torchferry.cli.export_cmd import add_archive_options, archive_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import",
        help="import a .onnx, TorchScript .pt, TorchServe .mar, Keras .keras/.h5 file or a "
        "TensorFlow SavedModel directory into a model store",
        description=(
            "Copy an ONNX graph (signature read from the graph), a TorchScript file (give "
            "--input specs; outputs are found by running it once) or a TorchServe .mar "
            "(TorchScript or ONNX inside; its built-in image_classifier or base_handler maps to "
            "torchferry's image or tensor handler) into STORE/NAME/VERSION. Code inside a .mar "
            "is never run. A Keras model (.keras, .h5) or a TensorFlow SavedModel directory "
            "(its serving_default signature) is converted to ONNX by tf2onnx and checked "
            "against TensorFlow on random inputs of batch sizes 1 and 3; this needs "
            "pip install 'torchferry[tensorflow]'."
        ),
    )
    parser.add_argument(
        "file", type=Path, metavar="FILE.onnx|FILE.pt|FILE.mar|FILE.keras|FILE.h5|SAVED_MODEL_DIR"
    )
    add_archive_options(parser, name_required=False)
    parser.add_argument(
        "--trust-custom-handler",
        action="store_true",
        help="import a .mar whose handler is custom Python: the model gets the closest "
        "built-in handler, and the handler's source is kept in the archive but never run",
    )
    # no --handler: the file's own choice (a .mar's handler), else tensor
    parser.set_defaults(func=run, handler=None)
    parser.epilog = "--name defaults to a .mar's modelName; other files need it."


def run(args: argparse.Namespace) -> int:
    from torchferry.cli.inspect_cmd import parity_table, tensors_table
    from torchferry.importers import import_model

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
        trust_custom_handler=args.trust_custom_handler,
        report=lambda note: console.print(f"[yellow]note:[/] {escape(note)}"),
        **settings,
    )
    manifest = archive.manifest
    console.print(tensors_table("inputs", manifest.signature.inputs))
    console.print(tensors_table("outputs", manifest.signature.outputs))
    if manifest.parity:
        console.print(parity_table(manifest.parity))
    console.print(
        f"imported {escape(args.file.name)} as [bold]{manifest.name}[/] version "
        f"{manifest.version} to {archive.path} (runtime {manifest.runtime}, "
        f"handler {manifest.handler.name})"
    )
    return 0
