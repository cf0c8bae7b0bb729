"""The archive's ``manifest.json``: what a model is, how to run it, and what its files hash to."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from torchferry.archive.formats import graph_runtime
from torchferry.errors import ArchiveError
from torchferry.signature import ModelSignature
from torchferry.store_layout import MANIFEST_NAME, MODEL_NAME_RULE, is_model_name

FORMAT_VERSION = 1


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    sha256: str
    size: int


class HandlerSpec(BaseModel):
    """Which handler pre/post-processes requests, and its settings (mean/std, labels file, top-k)."""

    name: str = "tensor"
    config: dict[str, Any] = Field(default_factory=dict)


class BatchingSpec(BaseModel):
    """Dynamic batching defaults (docs/batching.md).

    ``adaptive`` (the default) learns what a batch costs and waits for more rows only while
    waiting raises throughput, and only as long as ``max_latency_ms`` (the objective, if
    any) allows; until the cost is known it behaves as ``fixed``. ``fixed`` waits at most
    ``max_delay_ms`` after the oldest request: with no delay (the default, as in Triton) a
    batch is what queued while the previous one computed. ``instances`` runs that many
    copies of the model in each worker, each computing its own batches."""

    max_batch_size: int = Field(default=32, ge=1)
    max_delay_ms: float = Field(default=0.0, ge=0)
    mode: Literal["adaptive", "fixed"] = "adaptive"
    max_latency_ms: float | None = Field(default=None, gt=0)
    instances: int = Field(default=1, ge=1)


class ParityReport(BaseModel):
    """How far an exported form strays from its source model on random inputs of one batch
    size."""

    format: str
    batch_size: int
    max_abs_error: float
    max_rel_error: float
    #: What it was compared with: the source model's framework.
    reference: str = "eager PyTorch"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    name: str
    version: int = Field(ge=1)
    #: The runtime served by default (a name of :mod:`torchferry.archive.formats`);
    #: ``graphs`` may offer others.
    runtime: str
    #: Runtime name -> the file it loads, relative to the archive directory (by convention
    #: ``formats.GRAPH_FILES``; ``eager`` -> ``weights.safetensors``).
    graphs: dict[str, str]
    signature: ModelSignature
    #: Engine settings that belong to the model (e.g. ONNX Runtime's
    #: ``graph_optimization_level``: ``disabled``, ``basic``, ``extended`` or ``all``;
    #: TensorRT's precision, ``trt_fp16``, ``trt_int8``: ``runtimes/trt_options.py``).
    runtime_options: dict[str, Any] = Field(default_factory=dict)
    handler: HandlerSpec = Field(default_factory=HandlerSpec)
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    files: dict[str, FileEntry] = Field(default_factory=dict)
    framework_versions: dict[str, str] = Field(default_factory=dict)
    parity: list[ParityReport] = Field(default_factory=list)
    source: str = "export"
    #: The callable that rebuilds the eager ``nn.Module`` whose weights are
    #: ``weights.safetensors`` (what PyTorch-side optimizations start from). Either
    #: ``code/FILE.py:callable``, a source file carried (and hashed) in the archive, which
    #: the ``eager`` runtime requires; or ``module:callable`` / ``/abs/FILE.py:callable`` on
    #: the exporting machine, which only ``torchferry optimize`` uses.
    factory: str | None = None
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat())

    @model_validator(mode="before")
    @classmethod
    def _drop_retired_fields(cls, data: Any) -> Any:
        """Manifests written before archives were signed with model-signing (a ``model.sig``
        beside the manifest, ``archive/signing.py``) carry a placeholder that nothing ever
        filled: read them still, without it."""
        if isinstance(data, dict) and "signature_ed25519" in data:
            data = {k: v for k, v in data.items() if k != "signature_ed25519"}
        return data

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not is_model_name(value):  # it becomes a folder of the store
            raise ValueError(f"model name {value!r}: {MODEL_NAME_RULE}")
        return value

    def has_graph(self, runtime: str) -> bool:
        """Whether ``runtime`` can run this archive: it lists that runtime's graph (for
        ``onnxruntime-trt``, the ``onnxruntime`` graph it runs)."""
        return graph_runtime(runtime) in self.graphs

    def graph_file(self, runtime: str | None = None) -> str:
        runtime = runtime or self.runtime
        try:
            return self.graphs[graph_runtime(runtime)]
        except KeyError:
            runs = graph_runtime(runtime)
            graph = "" if runs == runtime else f" (it runs the {runs!r} graph)"
            raise ArchiveError(
                f"model {self.name!r} version {self.version} has no graph for runtime "
                f"{runtime!r}{graph}; it has {sorted(self.graphs)}"
            ) from None

    def graph_files(self, runtime: str | None = None) -> list[str]:
        """The listed files a runtime's graph is made of, sorted: the graph and the files
        named after it that carry its data (``model.onnx.data``)."""
        graph = self.graph_file(runtime)
        return sorted(name for name in self.files if name.startswith(graph))

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_NAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ArchiveError(
                f"{directory} is not a torchferry archive: no {MANIFEST_NAME}"
            ) from None
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ArchiveError(f"{path} is not a valid manifest: {exc}") from None
