"""One loaded version described as plain JSON (its *record*), and TorchServe's description
rendered from that record.

Workers send records to the supervisor (``status`` and ``load`` replies), and both the
inference port's read-only TorchServe routes and the management API render TorchServe's
``describe`` from them, so the rule lives here once. This module imports nothing but the
standard library: the supervisor, which never imports an engine, numpy or the repository,
imports it too. A loaded version is read through the :class:`Describable` shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class Describable(Protocol):
    """What a record is made from (``repository.LoadedModel``)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def manifest(self) -> Any: ...
    @property
    def archive(self) -> Any: ...
    @property
    def runtime(self) -> Any: ...
    @property
    def batcher(self) -> Any: ...
    @property
    def load_seconds(self) -> float: ...
    @property
    def signing(self) -> str: ...


def _tensors(specs: Any) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]


def version_record(model: Describable) -> dict[str, Any]:
    """The version as the supervisor and the management API see it."""
    manifest = model.manifest
    batcher = model.batcher
    runtime = model.runtime
    return {
        "name": model.name,
        "version": model.version,
        "runtime": runtime.name,
        "platform": runtime.platform,
        "handler": manifest.handler.name,
        "device": runtime.device,
        "max_batch_size": batcher.max_batch_size,
        "max_delay_ms": batcher.max_delay * 1000.0,
        "max_queue_rows": batcher.max_queue_rows,
        "batching": batcher.mode,
        "max_latency_ms": None if batcher.objective is None else batcher.objective * 1000.0,
        "instances": batcher.instances,
        "inputs": _tensors(manifest.signature.inputs),
        "outputs": _tensors(manifest.signature.outputs),
        "path": str(model.archive.path),
        "size_bytes": sum(entry.size for entry in manifest.files.values()),
        # as checked at load ("verified", "unverified": signed but no --trusted-key, or
        # "unsigned"), never re-verified per description
        "signed": model.signing != "unsigned",
        "signature": model.signing,
        "load_seconds": round(model.load_seconds, 4),
    }


def torchserve_description(
    record: Mapping[str, Any], ready: bool, pending: int = 0
) -> dict[str, Any]:
    """TorchServe's ``describe`` entry for one version (``GET /models/{m}[/{v}]``);
    ``pending`` is the rows waiting in its queue, where the caller knows them."""
    name, version = record["name"], record["version"]
    capacity = int(record["max_queue_rows"])
    return {
        "modelName": name,
        "modelVersion": str(version),
        "modelUrl": f"{name}/{version}",
        "runtime": record["runtime"],
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": record["max_batch_size"],
        "maxBatchDelay": round(record["max_delay_ms"]),
        "loadedAtStartup": True,
        "signature": record.get("signature", "unsigned"),
        "deviceType": "gpu" if str(record.get("device", "cpu")).startswith("cuda") else "cpu",
        "workers": [{"id": "1", "status": "READY" if ready else "UNLOADING", "gpu": False}],
        "jobQueueStatus": {
            "remainingCapacity": max(0, capacity - pending),
            "pendingRequests": pending,
        },
    }
