"""Server settings, from the command line or from Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from torchferry.runtimes.base import default_threads

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024


class ModelOverride(BaseModel):
    """Per-model settings given on the command line, which win over the manifest's defaults."""

    max_batch_size: int | None = Field(default=None, ge=1)
    max_delay_ms: float | None = Field(default=None, ge=0)


class ServerSettings(BaseModel):
    store: Path | None = None
    #: A single model's folder served under ``model_name`` (TorchServe's command shape).
    model_dir: Path | None = None
    model_name: str | None = None
    #: Load only these models from the store (all when empty).
    models: list[str] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: KServe V2 over gRPC on this port (same host, same models and batchers); off when None.
    grpc_port: int | None = Field(default=7070, ge=0, le=65535)
    #: Intra-op threads per runtime; the machine's cores when unset.
    threads: int | None = Field(default=None, ge=1)
    device: str = "cpu"
    #: Serve this runtime instead of each manifest's default, where the archive has its graph.
    runtime: str | None = None
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1)
    #: Rows allowed to wait in one model's queue before requests are refused with 503.
    max_queue_rows: int = Field(default=4096, ge=1)
    #: Seconds a request may wait for its answer before 504; no limit when unset.
    request_timeout_s: float | None = Field(default=None, gt=0)
    #: Batching for every model, then per model name.
    batching: ModelOverride = Field(default_factory=ModelOverride)
    per_model: dict[str, ModelOverride] = Field(default_factory=dict)
    log_level: str = "info"
    #: Log lines as readable text or as one JSON object per line.
    log_format: Literal["text", "json"] = "text"
    #: One line per request on the ``torchferry.access`` logger (at INFO).
    access_log: bool = True
    #: Prometheus metrics (Triton's per-model counters, latency and batch histograms).
    metrics: bool = True
    #: Run Python code that archives carry (custom handlers, eager models); off by default.
    trust_code: bool = False

    def resolved_threads(self) -> int:
        return self.threads or default_threads()

    def batching_for(self, name: str) -> dict[str, Any]:
        """The batching fields that override a model's manifest, most specific last."""
        merged = self.batching.model_dump(exclude_none=True)
        if name in self.per_model:
            merged.update(self.per_model[name].model_dump(exclude_none=True))
        return merged
