"""TorchServe's description of a model version, as the management API shows it: the
record the workers sent, rendered as the inference port's read-only ``/models`` routes
render it (``serving/describe.py``), plus what only the fleet knows (the version's state,
why it failed, whether it is the default, how many workers serve it)."""

from __future__ import annotations

from typing import Any

from torchferry.serving.describe import torchserve_description
from torchferry.serving.management.api import VersionView


def describe(info: VersionView, is_default: bool, workers: int) -> dict[str, Any]:
    ready = info.state == "ready"
    if info.record is not None:
        body = torchserve_description(info.record, ready)
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
