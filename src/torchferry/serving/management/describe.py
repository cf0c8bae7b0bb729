"""TorchServe's description of a model version, as the management API shows it: rendered
from the version record the workers sent (``describe.version_record``), plus what only the
fleet knows (the version's state, why it failed, whether it is the default, how many
workers serve it).

``torchserve_description`` renders the record the way the inference port's read-only
``/models`` routes do; the one shared copy belongs in ``serving/describe.py`` (numpy-free),
and this one goes when that lands.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchferry.serving.management.api import VersionView


def torchserve_description(
    record: Mapping[str, Any], ready: bool, is_default: bool
) -> dict[str, Any]:
    name, version = record["name"], record["version"]
    max_queue_rows = record.get("max_queue_rows") or 0
    return {
        "modelName": name,
        "modelVersion": str(version),
        "modelUrl": f"{name}/{version}",
        "runtime": record.get("runtime"),
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": record.get("max_batch_size"),
        "maxBatchDelay": round(record.get("max_delay_ms") or 0),
        "loadedAtStartup": True,
        "workers": [
            {
                "id": "1",
                "status": "READY" if ready else "UNLOADING",
                "gpu": str(record.get("device", "cpu")).startswith("cuda"),
            }
        ],
        "jobQueueStatus": {"remainingCapacity": max_queue_rows, "pendingRequests": 0},
    }


def describe(info: VersionView, is_default: bool, workers: int) -> dict[str, Any]:
    ready = info.state == "ready"
    if info.record is not None:
        body = torchserve_description(info.record, ready, is_default)
    else:
        body = {
            "modelName": info.name,
            "modelVersion": str(info.version),
            "modelUrl": f"{info.name}/{info.version}",
            "workers": [],
        }
    body["minWorkers"] = body["maxWorkers"] = workers
    if ready and body.get("workers"):
        # every worker serves every loaded version: one entry each
        template = body["workers"][0]
        body["workers"] = [{**template, "id": str(i)} for i in range(1, workers + 1)]
    body["state"] = info.state
    body["isDefault"] = is_default
    if info.reason is not None:
        body["reason"] = info.reason
    if info.source is not None:
        body["source"] = info.source
    return body
