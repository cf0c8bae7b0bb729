"""The console's Models page: every model the fleet knows, with its routes, rollout and each
version's state and record (``GET /console/api/overview``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchferry.errors import SIGNATURE_REFUSED
from torchferry.serving.management.api import VersionView
from torchferry.serving.management.context import Management

#: The record's ``signature`` (``build.check_signature``) -> the console's status: "signed"
#: only where a trusted key verified it; "unverified" is signed with no trusted key to check.
SIGNATURE_STATUS = {"verified": "signed", "unverified": "unverified", "unsigned": "unsigned"}
#: Record fields shown as they are (None where the fleet has no record).
RECORD_FIELDS = (
    "runtime", "handler", "device", "size_bytes", "inputs", "outputs", "max_batch_size",
    "max_delay_ms", "load_seconds",
)  # fmt: skip


def overview(management: Management) -> dict[str, Any]:
    return {"models": [model_view(management, name) for name in management.names()]}


def model_view(management: Management, name: str) -> dict[str, Any]:
    fleet = management.fleet
    model = fleet.state.models.get(name)
    routes = model.routes if model is not None else None
    weights = dict(routes.weights) if routes is not None else {}
    default = management.default(name)
    rollout = fleet.rollouts.status(name)
    return {
        "name": name,
        "default": default,
        "weights": {str(v): w for v, w in weights.items()},
        "shadow": routes.shadow.model_dump(mode="json") if routes and routes.shadow else None,
        # as GET /models/{m}/version-policy: the model's own, else the server's for it
        "policy": management.policy(name).to_triton(),
        "rollout": rollout.model_dump(mode="json") if rollout is not None else None,
        "versions": [
            version_view(info, default, weights) for info in management.versions(name).values()
        ],
    }


def version_view(
    info: VersionView, default: int | None, weights: Mapping[int, int]
) -> dict[str, Any]:
    record = info.record
    status, detail = signature_of(info)
    return {
        "version": info.version,
        "state": info.state,
        "reason": info.reason,
        "is_default": info.version == default,
        "weight": weights.get(info.version, 0) if weights else None,
        **{key: record.get(key) if record is not None else None for key in RECORD_FIELDS},
        "signature_status": status,
        "signature_detail": detail,
        "source": info.source or (str(record["path"]) if record and record.get("path") else None),
    }


def signature_of(info: VersionView) -> tuple[str, str | None]:
    """``(signed | unverified | unsigned | refused | unknown, the record's signature or the
    refusal)``; a refusal is found by the mark every refusal's message carries."""
    if info.state == "failed" and info.reason and SIGNATURE_REFUSED in info.reason:
        return "refused", info.reason
    signature = info.record.get("signature") if info.record is not None else None
    if not isinstance(signature, str):
        return "unknown", None
    return SIGNATURE_STATUS.get(signature, "unknown"), signature
