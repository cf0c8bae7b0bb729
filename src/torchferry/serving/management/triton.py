"""Triton's model repository extension: index, load, unload.

A load takes the model's versions from the store by its version policy (loading the missing
ones, unloading the extra ones); it never takes a model from the request: Triton's
``config`` and ``file:`` parameters, which would, are refused. Errors are Triton's
``{"error": "..."}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from torchferry.errors import InvalidInput
from torchferry.serving.management.answers import JSONResponse, TritonRoute, read_json
from torchferry.serving.management.context import management_of

router = APIRouter(tags=["Triton model repository"], route_class=TritonRoute)


def _parameters(document: Any) -> dict[str, Any]:
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise InvalidInput("the request body must be a JSON object")
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    return parameters


@router.post("/v2/repository/index", summary="Every model version in the store, and its state")
async def index(request: Request) -> Response:
    document = await read_json(request)
    if document is not None and not isinstance(document, dict):
        raise InvalidInput("the request body must be a JSON object")
    ready_only = (document or {}).get("ready", False)
    if not isinstance(ready_only, bool):
        raise InvalidInput("'ready' must be true or false")
    entries = []
    for entry in management_of(request).fleet.index():
        if ready_only and entry.get("state") != "READY":
            continue
        shown = {"name": entry["name"], "state": entry.get("state", "UNAVAILABLE")}
        if entry.get("version") is not None:
            shown["version"] = str(entry["version"])
        shown["reason"] = entry.get("reason") or ""
        entries.append(shown)
    return JSONResponse(entries)


@router.post("/v2/repository/models/{model_name}/load", summary="Load a model from the store")
async def load(request: Request, model_name: str) -> Response:
    parameters = _parameters(await read_json(request))
    if "config" in parameters:
        raise InvalidInput(
            "the 'config' parameter is not supported: a model's configuration comes from "
            "its archive in the store"
        )
    files = sorted(key for key in parameters if key.startswith("file:"))
    if files:
        raise InvalidInput(
            f"model files in the request ({', '.join(files)}) are not accepted: models are "
            "loaded only from the store (put the version there, or register it through "
            "POST /models?url=...)"
        )
    await management_of(request).fleet.load_model(model_name)
    return Response(status_code=200)


@router.post("/v2/repository/models/{model_name}/unload", summary="Unload every version")
async def unload(request: Request, model_name: str) -> Response:
    _parameters(await read_json(request))  # unload_dependents: there are no ensembles
    await management_of(request).fleet.unload(model_name)
    return Response(status_code=200)
