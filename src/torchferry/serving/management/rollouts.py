"""Canary rollouts of a model: ``POST /models/{m}/rollouts`` (a ``RolloutSpec``) starts
one and answers 201 with its status; ``GET /models/{m}/rollout`` follows it (each decision
with the figures behind it); ``POST /models/{m}/rollout/abort`` stops it and sends the
traffic back to the stable version; ``POST /models/{m}/rollout/promote`` skips the steps
left and makes the canary the default at once (409 for either when none runs)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from torchferry.errors import ModelNotFound
from torchferry.serving.lifecycle.state import RolloutSpec
from torchferry.serving.management.answers import (
    JSONResponse,
    TorchServeRoute,
    json_body,
    parse_body,
    read_json,
)
from torchferry.serving.management.context import management_of

router = APIRouter(tags=["torchferry rollouts"], route_class=TorchServeRoute)


class NoRollout(ModelNotFound):
    """The model has had no rollout (since the state was last reset)."""


@router.post(
    "/models/{model_name}/rollouts",
    status_code=201,
    summary="Start a rollout",
    openapi_extra=json_body({"version": 2, "steps": [10, 25, 50, 100]}, RolloutSpec),
)
async def start(request: Request, model_name: str) -> Response:
    management = management_of(request)
    spec = parse_body(RolloutSpec, await read_json(request, required=True))
    management.require(model_name)
    status = await management.fleet.rollouts.start(model_name, spec)
    return JSONResponse(status.model_dump(mode="json"), status_code=201)


@router.get("/models/{model_name}/rollout", summary="The rollout in progress, or the last one")
async def status(request: Request, model_name: str) -> Response:
    management = management_of(request)
    management.require(model_name)
    current = management.fleet.rollouts.status(model_name)
    if current is None:
        raise NoRollout(f"model {model_name} has no rollout")
    return JSONResponse(current.model_dump(mode="json"))


@router.post("/models/{model_name}/rollout/abort", summary="Abort the running rollout")
async def abort(request: Request, model_name: str) -> Response:
    management = management_of(request)
    management.require(model_name)
    return JSONResponse((await management.fleet.rollouts.abort(model_name)).model_dump(mode="json"))


@router.post(
    "/models/{model_name}/rollout/promote",
    summary="Promote the running rollout's canary at once (skip the steps left)",
)
async def promote(request: Request, model_name: str) -> Response:
    management = management_of(request)
    management.require(model_name)
    status = await management.fleet.rollouts.promote(model_name)
    return JSONResponse(status.model_dump(mode="json"))
