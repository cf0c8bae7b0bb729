"""What candidate builders share: the source archive, the data, a scratch store, the eager
model rebuilt from the manifest's factory, and ways to write candidate archives."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchferry.archive.code import is_archived_reference
from torchferry.archive.formats import (
    ONNX_FILE,
    ONNXRUNTIME,
    TORCHSCRIPT,
    TORCHSCRIPT_FILE,
    WEIGHTS_FILE,
)
from torchferry.archive.manifest import Manifest
from torchferry.archive.store import Archive, ModelStore
from torchferry.errors import InvalidInput, UntrustedCode
from torchferry.optimize.data import EvalData
from torchferry.optimize.errors import Skipped

WEIGHTS = WEIGHTS_FILE
ONNX_GRAPH = ONNX_FILE
TORCHSCRIPT_GRAPH = TORCHSCRIPT_FILE
#: Calibration uses at most this many rows, and at most this many bytes of input.
CALIBRATION_ROWS = 128
CALIBRATION_BYTES = 16 << 20
CALIBRATION_BATCH = 8


def load_eager(archive: Archive, *, trust_code: bool = False) -> nn.Module:
    """Rebuild the archive's eager ``nn.Module``: ``factory()`` + ``weights.safetensors``.

    Raises :class:`Skipped` when the manifest has no factory or the archive no weights. A
    factory carried in the archive (``code/FILE.py:NAME``, an eager export's) runs only with
    ``trust_code`` (else :class:`Skipped`); one named on this machine at export
    (``module:callable``, ``/abs/FILE.py:callable``) is imported from there and called, so
    optimize only archives you trust (``torchferry optimize`` has no ``--trust-code`` yet).
    """
    from torchferry.export.loader import load_model
    from torchferry.runtimes.eager import load_eager_model, load_weights

    manifest = archive.manifest
    if not manifest.factory:
        raise Skipped(
            "the manifest has no factory to rebuild the eager model "
            "(export with factory=... or torchferry export TARGET)"
        )
    if WEIGHTS not in manifest.files:
        raise Skipped(f"the archive has no {WEIGHTS} to rebuild the eager model from")
    if is_archived_reference(manifest.factory):
        try:
            return load_eager_model(archive, trust_code=trust_code)
        except UntrustedCode as exc:
            raise Skipped(exc.message) from None
    return load_weights(load_model(manifest.factory), archive.file(WEIGHTS))


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows it (archives are never written in place),
    else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class BuildContext:
    """What builders share: the source archive, the data, a scratch store, cached work."""

    def __init__(self, source: Archive, data: EvalData, scratch: ModelStore) -> None:
        self.source = source
        self.data = data
        self.scratch = scratch
        self._eager: nn.Module | None = None
        self._eager_error: Skipped | None = None
        self._onnx_base: Archive | None = None

    # -- inputs -------------------------------------------------------------------------
    def tensors(self, rows: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
        names = self.source.manifest.signature.input_names
        return tuple(torch.from_numpy(np.array(rows[n])) for n in names)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Two rows of the data (export needs a batch of at least 2)."""
        return self.tensors(self.data.batch(2))

    def calibration_rows(self) -> int:
        """The first rows of the data, at most ``CALIBRATION_ROWS`` and ``_BYTES`` of input."""
        row_bytes = sum(a[:1].nbytes for a in self.data.inputs.values()) or 1
        return max(1, min(self.data.rows, CALIBRATION_ROWS, CALIBRATION_BYTES // row_bytes))

    def calibration_feeds(self) -> list[dict[str, np.ndarray]]:
        """The calibration rows, in batches of ``CALIBRATION_BATCH`` rows."""
        rows = self.calibration_rows()
        return [
            self.data.rows_slice(start, min(start + CALIBRATION_BATCH, rows))
            for start in range(0, rows, CALIBRATION_BATCH)
        ]

    def calibration_tensors(self) -> list[tuple[torch.Tensor, ...]]:
        return [self.tensors(feed) for feed in self.calibration_feeds()]

    # -- the eager model and the base graphs --------------------------------------------
    def eager(self) -> nn.Module:
        """A fresh copy of the source's eager model (techniques may change it in place)."""
        if self._eager_error is not None:
            raise self._eager_error
        if self._eager is None:
            try:
                self._eager = load_eager(self.source)
            except Skipped as exc:
                self._eager_error = exc
                raise
        return copy.deepcopy(self._eager)

    def onnx_base(self) -> Archive:
        """The source when it has an ONNX graph, else an ONNX export of its eager model."""
        if ONNXRUNTIME in self.source.manifest.graphs:
            return self.source
        if self._onnx_base is None:
            try:
                model = self.eager()
            except Skipped as exc:
                raise Skipped(f"the archive has no ONNX graph, and {exc.reason}") from None
            self._onnx_base = self.export("fp32-onnx-export", model, "onnx", keep_factory=True)
        return self._onnx_base

    def extra_files(self) -> dict[str, Path]:
        """The source's files besides graphs and weights (labels, handler files...)."""
        manifest = self.source.manifest
        skip = {*manifest.graphs.values(), WEIGHTS}
        return {name: self.source.file(name) for name in manifest.files if name not in skip}

    # -- writing candidate archives ------------------------------------------------------
    def write(
        self, name: str, manifest: Manifest, files: dict[str, Path], **update: Any
    ) -> Archive:
        """A scratch archive of ``files`` (archive name -> path) with ``manifest`` updated."""
        from torchferry.export import framework_versions

        final = manifest.model_copy(
            update={
                "name": name,
                "version": 1,
                "source": f"optimize: {name}",
                # the versions that built and measured it
                "framework_versions": framework_versions(),
                **update,
            }
        )

        def populate(directory: Path) -> None:
            for relative, path in files.items():
                target = directory / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(path, target)

        return self.scratch.write(final, populate)

    def variant(self, name: str, base: Archive, runtime: str, options: dict[str, Any]) -> Archive:
        """``base`` as it is (every file), served by ``runtime`` with ``options``."""
        files = {n: base.file(n) for n in base.manifest.files}
        return self.write(name, base.manifest, files, runtime=runtime, runtime_options=options)

    def onnx_graph_archive(self, name: str, graph: Path) -> Archive:
        """A new ONNX graph with the source's signature, handler, batching and extra files.

        The fp32 weights and the factory are not carried: they would not be this model's.
        """
        files = {**self.extra_files(), ONNX_GRAPH: graph}
        return self.write(
            name,
            self.source.manifest,
            files,
            runtime=ONNXRUNTIME,
            graphs={ONNXRUNTIME: ONNX_GRAPH},
            runtime_options={},
            parity=[],
            factory=None,
        )

    def export(
        self, name: str, model: nn.Module, format: str, *, keep_factory: bool = False
    ) -> Archive:
        """``torchferry.export`` of ``model`` with the source's names, handler and files."""
        from torchferry.export import export

        manifest = self.source.manifest
        handler = manifest.handler.name
        if ":" in handler and not is_archived_reference(handler):
            # an export always records code as code/FILE.py:Class; anything else points at
            # code outside the archive, which optimizing must not import
            raise InvalidInput(
                f"the manifest names handler {handler!r}, code outside the archive; "
                "re-export the model with torchferry export --handler"
            )
        return export(
            model,
            self.example_inputs(),
            name=name,
            store=self.scratch.root,
            format=format,  # type: ignore[arg-type]
            input_names=manifest.signature.input_names,
            output_names=manifest.signature.output_names,
            handler=handler,
            handler_config=manifest.handler.config,
            extra_files=self.extra_files(),
            batching=manifest.batching,
            factory=manifest.factory if keep_factory else None,
        )

    def torchscript(self, name: str, model: nn.Module, device: str = "cpu") -> Archive:
        """A TorchScript archive of a model ``export`` cannot save (quantized tensors do not
        go into safetensors): traced, parity-checked against ``model``, no weights file."""
        from torchferry.export.parity import check_parity, module_runner, torchscript_runner
        from torchferry.export.torchscript import export_torchscript

        manifest = self.source.manifest
        work = self.scratch.root / f".{name}"
        work.mkdir(parents=True)
        graph = work / TORCHSCRIPT_GRAPH
        examples = tuple(t.to(device) for t in self.example_inputs())
        export_torchscript(model, examples, graph, "trace")
        reports = check_parity(
            module_runner(model, manifest.signature, device),
            manifest.signature,
            {"torchscript": torchscript_runner(graph, manifest.signature, device)},
        )
        return self.write(
            name,
            manifest,
            {**self.extra_files(), TORCHSCRIPT_GRAPH: graph},
            runtime=TORCHSCRIPT,
            graphs={TORCHSCRIPT: TORCHSCRIPT_GRAPH},
            runtime_options={},
            parity=reports,
            factory=None,
        )

    def scratch_file(self, name: str) -> Path:
        directory = self.scratch.root / f".{name}"
        directory.mkdir(parents=True, exist_ok=True)
        return directory / ONNX_GRAPH
