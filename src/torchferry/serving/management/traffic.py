"""torchferry's own routing calls, per model: traffic weights between loaded versions, the
shadow version, and the version policy (in Triton's ``version_policy`` JSON shape).

- ``GET/PUT/DELETE /models/{m}/traffic``: ``PUT {"1": 90, "2": 10}`` (percentages summing
  to 100, on loaded versions); ``DELETE`` goes back to the default version;
- ``GET/PUT/DELETE /models/{m}/shadow``: ``PUT {"version": 3, "share": 0.5}`` mirrors that
  share of routed requests to version 3 and compares its answers; ``GET`` shows the
  comparison so far (rows compared, argmax agreement, largest absolute difference);
- ``GET/PUT /models/{m}/version-policy``: ``PUT {"latest": {"num_versions": 2}}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from torchferry.errors import Conflict, InvalidInput, ModelNotFound
from torchferry.serving.lifecycle.policy import VersionPolicy
from torchferry.serving.lifecycle.state import Routes, Shadow
from torchferry.serving.management.answers import (
    JSONResponse,
    TorchServeRoute,
    json_body,
    parse_body,
    read_json,
    validation_message,
)
from torchferry.serving.management.context import Management, management_of

router = APIRouter(tags=["torchferry traffic"], route_class=TorchServeRoute)


def _ready(management: Management, name: str, required: bool = True) -> list[int]:
    versions = management.require(name) if required else management.versions(name)
    return [v for v, info in versions.items() if info.state == "ready"]


def _traffic(management: Management, name: str, routes: Routes | None) -> Response:
    if routes is None:
        model = management.fleet.state.models.get(name)
        routes = model.routes if model is not None else Routes()
    return JSONResponse(
        {
            "model": name,
            "default": management.default(name),
            "weights": {str(v): w for v, w in routes.weights.items()},
        }
    )


def _weights(document: Any) -> dict[int, int]:
    if isinstance(document, dict) and isinstance(document.get("weights"), dict):
        document = document["weights"]
    if not isinstance(document, dict) or not document:
        raise InvalidInput('expected the weights as a JSON object: {"1": 90, "2": 10}')
    weights: dict[int, int] = {}
    for key, value in document.items():
        if not str(key).isdigit() or int(key) < 1:
            raise InvalidInput(f"traffic weights: {key!r} is not a version number")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInput(f"traffic weight of version {key}: {value!r} is not a percentage")
        weights[int(key)] = value
    total = sum(weights.values())
    if total != 100:
        raise InvalidInput(f"traffic weights are percentages summing to 100 (these sum to {total})")
    return weights


@router.get("/models/{model_name}/traffic", summary="The model's traffic split")
async def get_traffic(request: Request, model_name: str) -> Response:
    management = management_of(request)
    management.require(model_name)
    return _traffic(management, model_name, None)


@router.put(
    "/models/{model_name}/traffic",
    summary="Split traffic between loaded versions",
    openapi_extra=json_body({"1": 90, "2": 10}),
)
async def put_traffic(request: Request, model_name: str) -> Response:
    management = management_of(request)
    weights = _weights(await read_json(request, required=True))
    ready = _ready(management, model_name)
    missing = sorted(v for v, w in weights.items() if w > 0 and v not in ready)
    if missing:
        raise Conflict(
            f"model {model_name} has no loaded version {', '.join(map(str, missing))} "
            f"(loaded: {', '.join(map(str, ready)) or 'none'})"
        )
    routes = await management.fleet.set_weights(model_name, weights)
    return _traffic(management, model_name, routes)


@router.delete("/models/{model_name}/traffic", summary="Send all traffic to the default")
async def delete_traffic(request: Request, model_name: str) -> Response:
    management = management_of(request)
    management.require(model_name)
    routes = await management.fleet.set_weights(model_name, None)
    return _traffic(management, model_name, routes)


async def _shadow(management: Management, name: str, routes: Routes | None) -> Response:
    if routes is None:
        model = management.fleet.state.models.get(name)
        routes = model.routes if model is not None else Routes()
    shadow = routes.shadow
    figures = None
    if shadow is not None:
        row = (await management.fleet.stats(name, drain=False)).get(shadow.version) or {}
        compared = int(row.get("compared", 0))
        agreed = int(row.get("agreed", 0))
        figures = {
            "compared": compared,
            "agreed": agreed,
            "agreement": agreed / compared if compared else None,
            "max_abs_diff": row.get("max_abs_diff"),
        }
    return JSONResponse(
        {
            "model": name,
            "shadow": shadow.model_dump(mode="json") if shadow is not None else None,
            "figures": figures,
        }
    )


@router.get("/models/{model_name}/shadow", summary="The shadow version and its agreement")
async def get_shadow(request: Request, model_name: str) -> Response:
    management = management_of(request)
    management.require(model_name)
    return await _shadow(management, model_name, None)


@router.put(
    "/models/{model_name}/shadow",
    summary="Mirror traffic to a version and compare",
    openapi_extra=json_body({"version": 3, "share": 0.5}, Shadow),
)
async def put_shadow(request: Request, model_name: str) -> Response:
    management = management_of(request)
    shadow = parse_body(Shadow, await read_json(request, required=True))
    if shadow.version not in _ready(management, model_name):
        raise Conflict(f"model {model_name} has no loaded version {shadow.version}: load it first")
    routes = await management.fleet.set_shadow(model_name, shadow)
    return await _shadow(management, model_name, routes)


@router.delete("/models/{model_name}/shadow", summary="Stop mirroring traffic")
async def delete_shadow(request: Request, model_name: str) -> Response:
    management = management_of(request)
    management.require(model_name)
    routes = await management.fleet.set_shadow(model_name, None)
    return await _shadow(management, model_name, routes)


def _policy_answer(management: Management, name: str, versions: list[int]) -> Response:
    policy = management.policy(name).to_triton()
    return JSONResponse({"model": name, "version_policy": policy, "versions": versions})


def _known_model(management: Management, name: str) -> None:
    if name in management.names():
        return
    if any(entry.get("name") == name for entry in management.fleet.index()):
        return
    raise ModelNotFound(f"Model not found: {name}")


@router.get("/models/{model_name}/version-policy", summary="Which store versions are loaded")
async def get_policy(request: Request, model_name: str) -> Response:
    management = management_of(request)
    _known_model(management, model_name)
    versions = _ready(management, model_name, required=False)
    return _policy_answer(management, model_name, versions)


@router.put(
    "/models/{model_name}/version-policy",
    summary="Change which versions are loaded",
    openapi_extra=json_body({"latest": {"num_versions": 2}}),
)
async def put_policy(request: Request, model_name: str) -> Response:
    management = management_of(request)
    document = await read_json(request, required=True)
    if isinstance(document, dict) and "version_policy" in document:
        document = document["version_policy"]
    try:
        policy = VersionPolicy.from_triton(document)
    except ValidationError as exc:
        raise InvalidInput(f"version policy: {validation_message(exc)}") from None
    except (ValueError, TypeError) as exc:
        raise InvalidInput(str(exc)) from None
    _known_model(management, model_name)
    versions = await management.fleet.set_policy(model_name, policy)
    return _policy_answer(management, model_name, versions)
