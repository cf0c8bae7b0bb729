"""``torchferry export FILE.py:FACTORY``: export a model into a store, with a parity check."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console

from torchferry.errors import ExportError, TorchferryError
from torchferry.signature import TensorSpec

LABELS_NAME = "labels.json"


def input_spec(text: str) -> TensorSpec:
    """argparse type for ``--input NAME:SHAPE:DTYPE``."""
    try:
        return TensorSpec.parse(text)
    except ValidationError as exc:
        message = "; ".join(str(e["msg"]) for e in exc.errors())
        raise argparse.ArgumentTypeError(f"--input {text!r}: {message}") from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def json_object(text: str) -> dict[str, Any]:
    """argparse type for ``--handler-config '{"top_k": 5}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def labels_json(path: Path) -> bytes:
    """A labels file as JSON: a ``.json`` file as it is, else one label per non-empty line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"cannot read --labels {str(path)!r}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        if path.suffix.lower() == ".json":
            raise ExportError(f"--labels {str(path)!r} is not valid JSON") from None
        value = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(value, (list, dict)):
        raise ExportError(f"--labels {str(path)!r} must hold a JSON list or object of labels")
    return json.dumps(value, indent=1).encode("utf-8")


def add_archive_options(parser: argparse.ArgumentParser, name_required: bool = True) -> None:
    """Options shared by ``export`` and ``import``: where to write, handler, batching."""
    parser.add_argument("--name", required=name_required, help="model name in the store")
    parser.add_argument("--store", required=True, type=Path, help="model store directory")
    parser.add_argument("--version", type=int, help="version to write (default: the next one)")
    parser.add_argument(
        "--input",
        dest="inputs",
        action="append",
        type=input_spec,
        metavar="NAME:SHAPE:DTYPE",
        help="an input, e.g. x:-1,3,224,224:float32 (dim 0 is the batch); repeat for several, "
        "in the order forward() takes them",
    )
    parser.add_argument(
        "--output-name",
        dest="output_names",
        action="append",
        metavar="NAME",
        help="name of an output, in order; repeat for several",
    )
    parser.add_argument(
        "--handler",
        default="tensor",
        metavar="NAME|FILE.py:CLASS",
        help="request handler: tensor, image, an installed one, or your Handler subclass as "
        "FILE.py:CLASS or package.module:CLASS (its file is stored in the archive; serving it "
        "needs --trust-code)",
    )
    parser.add_argument(
        "--handler-config", type=json_object, metavar="JSON", help="handler settings, a JSON object"
    )
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help=f"class labels (JSON, or one per line), stored as {LABELS_NAME}",
    )
    parser.add_argument(
        "--extra-file",
        dest="extra_files",
        action="append",
        type=Path,
        metavar="PATH",
        help="a file to store in the archive under its base name, for the handler "
        "(a vocabulary, a config); repeat for several",
    )
    parser.add_argument("--max-batch-size", type=int, help="default batching: largest batch")
    parser.add_argument("--max-delay-ms", type=float, help="default batching: longest wait")


def archive_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``handler_config``, ``extra_files`` and ``batching`` from the shared options."""
    from torchferry.archive.manifest import BatchingSpec

    config = dict(args.handler_config or {})
    extra: dict[str, Any] = {}
    if args.labels is not None:
        extra[LABELS_NAME] = labels_json(args.labels)
        config["labels"] = LABELS_NAME
    for path in getattr(args, "extra_files", None) or []:
        if path.name in extra:
            raise ExportError(
                f"--extra-file {str(path)!r}: the archive already gets a file named {path.name!r}"
            )
        extra[path.name] = path
    batching = None
    if args.max_batch_size is not None or args.max_delay_ms is not None:
        fields = {"max_batch_size": args.max_batch_size, "max_delay_ms": args.max_delay_ms}
        try:
            batching = BatchingSpec(**{k: v for k, v in fields.items() if v is not None})
        except ValidationError as exc:
            raise ExportError(f"invalid batching settings: {exc.errors()[0]['msg']}") from None
    return {"handler_config": config, "extra_files": extra, "batching": batching}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a PyTorch model to ONNX and TorchScript in a model store",
        description=(
            "Import FILE.py (or package.module), call FACTORY() for an nn.Module, export it, "
            "check every exported form against eager PyTorch, and write STORE/NAME/VERSION."
        ),
    )
    parser.add_argument("target", metavar="FILE.py:FACTORY", help="or package.module:factory")
    add_archive_options(parser)
    parser.add_argument(
        "--format",
        choices=["onnx", "torchscript", "both", "eager"],
        default="both",
        help="eager: no graph; the archive carries FILE.py and the weights, for models with "
        "Python control flow (serving it needs --trust-code)",
    )
    parser.add_argument(
        "--torchscript", choices=["trace", "script"], default="trace", help="how to make model.pt"
    )
    parser.add_argument(
        "--tolerance", type=float, default=1e-3, help="parity tolerance, abs and rel (1e-3)"
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from torchferry.cli.inspect_cmd import parity_table
    from torchferry.export import export, load_model
    from torchferry.export.inputs import random_inputs

    console = Console()
    if not args.inputs:
        raise ExportError("give the model's inputs with --input NAME:SHAPE:DTYPE")
    settings = archive_settings(args)
    model = load_model(args.target)
    try:
        examples = random_inputs(args.inputs, batch_size=2)
    except TorchferryError as exc:
        raise ExportError(exc.message) from None
    console.print(f"exporting {args.target} as [bold]{args.name}[/] ({args.format})...")
    archive = export(
        model,
        tuple(examples.values()),  # positional, in --input order
        name=args.name,
        store=args.store,
        version=args.version,
        format=args.format,
        input_names=list(examples),
        output_names=args.output_names,
        handler=args.handler,
        tolerance=args.tolerance,
        opset=args.opset,
        torchscript=args.torchscript,
        factory=_portable_target(args.target),
        **settings,
    )
    manifest = archive.manifest
    console.print(parity_table(manifest.parity))
    console.print(
        f"wrote [bold]{manifest.name}[/] version {manifest.version} to {archive.path} "
        f"(runtime {manifest.runtime}, {manifest.source})"
    )
    return 0


def _portable_target(target: str) -> str:
    """A ``FILE.py:FACTORY`` target with the file made absolute, so it resolves from anywhere."""
    path, sep, attribute = target.rpartition(":")
    if sep and path.endswith(".py"):
        return f"{Path(path).resolve()}:{attribute}"
    return target
