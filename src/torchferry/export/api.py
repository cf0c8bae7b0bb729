"""``export()``: an ``nn.Module`` to a verified, versioned archive in a model store."""

from __future__ import annotations

import logging
import platform
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import onnx
import onnxruntime
import torch
from pydantic import ValidationError
from torch import nn

import torchferry
from torchferry.archive.formats import (
    EAGER,
    ONNX_FILE,
    ONNXRUNTIME,
    TORCHSCRIPT,
    TORCHSCRIPT_FILE,
    WEIGHTS_FILE,
)
from torchferry.archive.integrity import safe_relative
from torchferry.archive.manifest import (
    MANIFEST_NAME,
    BatchingSpec,
    HandlerSpec,
    Manifest,
)
from torchferry.archive.store import Archive, ModelStore
from torchferry.errors import ArchiveError, ExportError
from torchferry.export.eager import archive_factory, eager_runner, require_factory
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
    module_runner,
    onnx_runner,
    torchscript_runner,
)
from torchferry.export.quiet import quiet
from torchferry.export.torchscript import TorchScriptMethod, export_torchscript
from torchferry.export.weights import has_plain_weights, save_weights
from torchferry.handlers import stage_handler
from torchferry.handlers.base import Handler
from torchferry.signature import ModelSignature

log = logging.getLogger(__name__)

Format = Literal["onnx", "torchscript", "both", "eager"]
FORMATS: tuple[Format, ...] = ("onnx", "torchscript", "both", "eager")
WEIGHTS_NAME = WEIGHTS_FILE
ONNX_GRAPH = ONNX_FILE
TORCHSCRIPT_GRAPH = TORCHSCRIPT_FILE
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
            runtime=ONNXRUNTIME,
            graphs={},
            signature=ModelSignature(inputs=(), outputs=()),
        )
    except ValidationError as exc:
        raise ExportError(f"invalid model name {name!r}: {exc.errors()[0]['msg']}") from None


ExtraFiles = Mapping[str, bytes | Path] | Sequence[str | Path]


def _extra_files_by_name(extra_files: ExtraFiles) -> Mapping[str, bytes | Path]:
    """``{name: path or bytes}`` as given, or a list of paths, each named by its base name."""
    if isinstance(extra_files, Mapping):
        return extra_files
    if isinstance(extra_files, str | bytes):
        raise ExportError("extra_files must be a list of paths or a mapping name -> content")
    by_name: dict[str, bytes | Path] = {}
    for item in extra_files:
        path = Path(item)
        if path.name in by_name:
            raise ExportError(f"two extra files are named {path.name!r}; rename one of them")
        by_name[path.name] = path
    return by_name


def _write_extra_files(extra_files: ExtraFiles, directory: Path) -> None:
    for name, content in _extra_files_by_name(extra_files).items():
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
    handler: str | type[Handler] = "tensor",
    handler_config: dict[str, Any] | None = None,
    extra_files: ExtraFiles | None = None,
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

    ``format="eager"`` compiles nothing, for models whose Python control flow neither
    tracing nor ONNX capture: it requires ``factory``, whose source file is copied into the
    archive as ``code/FILE.py`` (the manifest's factory becomes ``code/FILE.py:NAME``, the
    runtime ``eager``, ``graphs`` ``{"eager": "weights.safetensors"}``), and the parity check
    runs the model rebuilt from the archive. Serving it runs that file: ``--trust-code``.

    ``handler`` is a built-in handler (``"tensor"``, ``"image"``), an installed one (entry
    point group ``torchferry.handlers``), or your own ``Handler`` subclass as ``FILE.py:Class``,
    ``package.module:Class`` or the class itself: its source file is copied into the archive
    as ``code/FILE.py`` (serving it needs ``--trust-code``). The handler is created and its
    ``setup`` run once at export, over ``extra_files`` (``{name: path or bytes}``, or a list
    of paths stored under their base names), so that a broken handler fails here.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    if format == EAGER:
        require_factory(factory)
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
        handler_name = stage_handler(
            handler,
            work,
            config=handler_config or {},
            signature=signature,
            model_name=name,
            model_version=version if version is not None else model_store.next_version(name),
        )
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
            graphs[ONNXRUNTIME] = ONNX_GRAPH
            runners["onnx"] = onnx_runner(work / ONNX_GRAPH, signature)
        if format in ("torchscript", "both"):
            export_torchscript(model, args, work / TORCHSCRIPT_GRAPH, torchscript)
            graphs[TORCHSCRIPT] = TORCHSCRIPT_GRAPH
            runners["torchscript"] = torchscript_runner(
                work / TORCHSCRIPT_GRAPH, signature, str(device)
            )
        if source == "export" and format != EAGER:
            source = f"export (torchscript {torchscript})"
        if has_plain_weights(model):
            save_weights(model, work / WEIGHTS_NAME)
        else:
            log.info("%s: the state holds quantized tensors; the graph carries the weights", name)
        if format == EAGER:
            factory = archive_factory(factory, work)
            source = "export (eager)"
            graphs[EAGER] = WEIGHTS_NAME
            runners[EAGER] = eager_runner(work, name, signature, factory, str(device))

        reports = check_parity(
            module_runner(model, signature, device),
            signature,
            runners,
            tolerance=tolerance,
            int_high=int_bounds(names, args),
        )
        runners.clear()  # drop the ONNX Runtime session and the TorchScript module

        try:
            manifest = Manifest(
                name=name,
                version=version if version is not None else model_store.next_version(name),
                runtime=next(iter(graphs)),  # the first written: ONNX when there is ONNX
                graphs=graphs,
                signature=signature,
                handler=HandlerSpec(name=handler_name, config=dict(handler_config or {})),
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
