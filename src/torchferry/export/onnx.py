"""``nn.Module`` -> ONNX with a dynamic batch dimension.

The ``torch.export``-based ("dynamo") exporter is tried first; when it cannot capture the
model, the TorchScript-based legacy exporter is used, and the result says which one ran.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
import torch
from torch import nn

from torchferry.errors import ExportError
from torchferry.export.quiet import quiet

GRAPH_NAME = "model.onnx"
#: Above this many bytes of weights, they go to an external data file (protobuf caps at 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1536 * 1024 * 1024

Exporter = Literal["dynamo", "legacy"]


@dataclass(frozen=True)
class OnnxExport:
    """What an ONNX export produced."""

    exporter: Exporter
    #: Files written into the target directory: the graph first, then any external data.
    files: list[str]
    #: Why the dynamo exporter was not used, when it was not.
    fallback_reason: str | None = None


def _summary(exc: BaseException) -> str:
    """The root cause of an exporter failure, in one line."""
    root: BaseException = exc
    while root.__cause__ is not None:
        root = root.__cause__
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    return f"{type(root).__name__}: {lines[0] if lines else ''}"[:300]


def _weight_bytes(model: nn.Module) -> int:
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _dynamo(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int | None,
) -> None:
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        model,
        args,
        str(path),
        dynamo=True,
        dynamic_shapes=tuple({0: batch} for _ in args),
        input_names=list(input_names),
        output_names=list(output_names),
        opset_version=opset,
        external_data=_weight_bytes(model) > EXTERNAL_DATA_THRESHOLD,
        verbose=False,
    )


def _legacy(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int | None,
) -> None:
    torch.onnx.export(
        model,
        args,
        str(path),
        dynamo=False,
        dynamic_axes={name: {0: "batch"} for name in (*input_names, *output_names)},
        input_names=list(input_names),
        output_names=list(output_names),
        opset_version=opset,
        verbose=False,
    )


def export_onnx(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    directory: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int | None = None,
    allow_legacy: bool = True,
) -> OnnxExport:
    """Export ``model`` to ``directory/model.onnx`` (plus external data files, if any).

    ``args`` should have a batch of at least 2: ``torch.export`` specializes size-1 dims.
    """
    with tempfile.TemporaryDirectory(prefix="torchferry-onnx-") as scratch:
        work = Path(scratch)
        path = work / GRAPH_NAME
        exporter: Exporter = "dynamo"
        reason: str | None = None
        try:
            with quiet(), torch.no_grad():
                _dynamo(model, args, path, input_names, output_names, opset)
        except Exception as exc:
            reason = _summary(exc)
            if not allow_legacy:
                raise ExportError(f"ONNX export failed: {reason}") from exc
            for leftover in work.iterdir():
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            exporter = "legacy"
            try:
                with quiet(), torch.no_grad():
                    _legacy(model, args, path, input_names, output_names, opset)
            except Exception as legacy_exc:
                raise ExportError(
                    f"ONNX export failed with both exporters: dynamo: {reason}; "
                    f"legacy: {_summary(legacy_exc)}"
                ) from legacy_exc
        try:
            onnx.checker.check_model(str(path))
        except Exception as exc:
            raise ExportError(f"the exported ONNX graph is invalid: {_summary(exc)}") from exc
        produced = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
        files = [GRAPH_NAME, *(f for f in produced if f != GRAPH_NAME)]
        directory.mkdir(parents=True, exist_ok=True)
        for name in files:
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(work / name, target)
    return OnnxExport(exporter=exporter, files=files, fallback_reason=reason)
