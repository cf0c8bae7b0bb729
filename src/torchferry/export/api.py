"""``export()``: an ``nn.Module`` to a verified, versioned archive in a model store."""

from __future__ import annotations

import logging
import platform
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import onnx
import onnxruntime
import torch
from pydantic import ValidationError
from torch import nn

import torchferry
from torchferry.archive.integrity import safe_relative
from torchferry.archive.manifest import (
    DEFAULT_GRAPH_FILES,
    MANIFEST_NAME,
    BatchingSpec,
    HandlerSpec,
    Manifest,
)
from torchferry.archive.store import Archive, ModelStore
from torchferry.errors import ArchiveError, ExportError
from torchferry.export.inputs import (
    ExampleInputs,
    batched,
    input_specs,
    int_bounds,
    normalize_inputs,
)
from torchferry.export.onnx import export_onnx
from torchferry.export.outputs import flatten_outputs, output_names_for, output_specs
from torchferry.export.parity import (
    DEFAULT_TOLERANCE,
    Runner,
    check_parity,
    onnx_runner,
    torchscript_runner,
)
from torchferry.export.quiet import quiet
from torchferry.export.torchscript import TorchScriptMethod, export_torchscript
from torchferry.export.weights import has_plain_weights, save_weights
from torchferry.signature import ModelSignature

log = logging.getLogger(__name__)

Format = Literal["onnx", "torchscript", "both"]
WEIGHTS_NAME = "weights.safetensors"
ONNX_GRAPH = DEFAULT_GRAPH_FILES["onnxruntime"]
TORCHSCRIPT_GRAPH = DEFAULT_GRAPH_FILES["torchscript"]
_RESERVED = {MANIFEST_NAME, ONNX_GRAPH, TORCHSCRIPT_GRAPH, WEIGHTS_NAME}


def framework_versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "torchferry": torchferry.__version__,
    }


def _check_name(name: str) -> None:
    try:
        Manifest(
            name=name,
            version=1,
            runtime="onnxruntime",
            graphs={},
            signature=ModelSignature(inputs=(), outputs=()),
        )
    except ValidationError as exc:
        raise ExportError(f"invalid model name {name!r}: {exc.errors()[0]['msg']}") from None


def _write_extra_files(extra_files: Mapping[str, bytes | Path], directory: Path) -> None:
    for name, content in extra_files.items():
        try:
            relative = safe_relative(name)
        except ArchiveError as exc:
            raise ExportError(exc.message) from None
        if relative.as_posix() in _RESERVED:
            raise ExportError(f"extra file {name!r} would replace a file the export writes")
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            source = Path(content)
            if not source.is_file():
                raise ExportError(f"extra file {name!r}: {str(source)!r} is not a file")
            shutil.copyfile(source, target)


def export(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    name: str,
    store: str | Path,
    version: int | None = None,
    format: Format = "both",
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    handler: str = "tensor",
    handler_config: dict[str, Any] | None = None,
    extra_files: Mapping[str, bytes | Path] | None = None,
    batching: BatchingSpec | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int | None = None,
    torchscript: TorchScriptMethod = "trace",
    factory: str | None = None,
) -> Archive:
    """Export ``model`` and write it as ``STORE/NAME/VERSION`` (version defaults to the next).

    ``example_inputs`` give the inputs' dtypes and non-batch dimensions (dim 0 is the batch;
    a batch of 1 is repeated to 2 for export). ``format`` chooses ONNX, TorchScript or both;
    ``weights.safetensors`` is written unless the state holds quantized tensors (which no
    pickle-free format stores; the TorchScript graph then carries them). Every exported form is checked against eager
    PyTorch on random inputs of batch sizes 1 and 3 (see ``torchferry.export.parity`` for
    the tolerance rule); a form that strays raises ``ExportError``. Nothing is written to the
    store unless everything succeeds. ``factory`` (``module:callable`` or
    ``FILE.py:callable``, returning the model's ``nn.Module``) is recorded so that tools such
    as ``torchferry optimize`` can rebuild the eager model from ``weights.safetensors``.
    """
    if format not in ("onnx", "torchscript", "both"):
        raise ExportError(f"unknown format {format!r}; use 'onnx', 'torchscript' or 'both'")
    if not isinstance(model, nn.Module):
        raise ExportError(f"expected a torch.nn.Module, got a {type(model).__name__}")
    if torchscript not in ("trace", "script"):
        raise ExportError(f"unknown TorchScript method {torchscript!r}; use 'trace' or 'script'")
    if tolerance <= 0:
        raise ExportError(f"tolerance must be positive, got {tolerance}")
    _check_name(name)
    model_store = ModelStore(store)
    if version is not None and model_store.path(name, version).exists():
        raise ExportError(f"{name!r} version {version} already exists in {model_store.root}")

    model.eval()
    names, tensors = normalize_inputs(model, example_inputs, input_names)
    args = batched(names, tensors)
    device = args[0].device
    try:
        with quiet(), torch.no_grad():
            result = model(*args)
    except Exception as exc:
        raise ExportError(
            f"the model failed on the example inputs: {type(exc).__name__}: {exc}"
        ) from exc
    out_names = output_names_for(result, output_names)
    outputs = flatten_outputs(result, out_names)
    signature = ModelSignature(
        inputs=tuple(input_specs(names, args)),
        outputs=tuple(output_specs(out_names, outputs, args[0].shape[0])),
    )

    with tempfile.TemporaryDirectory(prefix="torchferry-export-") as scratch:
        work = Path(scratch)
        graphs: dict[str, str] = {}
        runners: dict[str, Runner] = {}
        source = "export"
        _write_extra_files(extra_files or {}, work)  # first: a bad one fails fast
        if format in ("onnx", "both"):
            result_onnx = export_onnx(
                model, args, work, input_names=names, output_names=out_names, opset=opset
            )
            if result_onnx.fallback_reason:
                log.warning(
                    "the dynamo ONNX exporter failed (%s); used the legacy exporter",
                    result_onnx.fallback_reason,
                )
            source = f"export ({result_onnx.exporter})"
            graphs["onnxruntime"] = ONNX_GRAPH
            runners["onnx"] = onnx_runner(work / ONNX_GRAPH, signature)
        if format in ("torchscript", "both"):
            export_torchscript(model, args, work / TORCHSCRIPT_GRAPH, torchscript)
            graphs["torchscript"] = TORCHSCRIPT_GRAPH
            runners["torchscript"] = torchscript_runner(
                work / TORCHSCRIPT_GRAPH, signature, str(device)
            )
        if source == "export":
            source = f"export (torchscript {torchscript})"
        if has_plain_weights(model):
            save_weights(model, work / WEIGHTS_NAME)
        else:
            log.info("%s: the state holds quantized tensors; the graph carries the weights", name)

        reports = check_parity(
            model,
            signature,
            runners,
            tolerance=tolerance,
            int_high=int_bounds(names, args),
            device=device,
        )
        runners.clear()  # drop the ONNX Runtime session and the TorchScript module

        try:
            manifest = Manifest(
                name=name,
                version=version if version is not None else model_store.next_version(name),
                runtime="onnxruntime" if "onnxruntime" in graphs else "torchscript",
                graphs=graphs,
                signature=signature,
                handler=HandlerSpec(name=handler, config=dict(handler_config or {})),
                batching=batching or BatchingSpec(),
                framework_versions=framework_versions(),
                parity=reports,
                source=source,
                factory=factory,
            )
        except ValidationError as exc:
            raise ExportError(f"invalid archive settings: {exc}") from None

        def populate(staging: Path) -> None:
            for item in work.iterdir():
                if item.is_dir():
                    shutil.copytree(item, staging / item.name)
                else:
                    shutil.copy2(item, staging / item.name)

        return model_store.write(manifest, populate)
