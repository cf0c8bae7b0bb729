"""TorchServe's management API, answered as TorchServe answers it (curl-shaped calls: the
arguments in the query string, no body).

- ``GET /models`` (``limit``, ``next_page_token``) lists the models;
- ``GET /models/{m}``, ``/models/{m}/all``, ``/models/{m}/{v}`` describe versions (``v`` may
  be written ``2.0``), each with its state (and why a failed one failed);
- ``POST /models?url=...&model_name=...&synchronous=true`` registers a version: the source
  (a path under the source roots, or an ``https://`` URL that ``--allowed-urls`` allows:
  see ``remote``) is staged into the store, loaded and warmed up in every worker, then routable; it does not
  become the default when the model already serves one (``PUT .../set-default`` does that).
  ``synchronous=false`` answers 202 at once and loads in the background;
- ``PUT /models/{m}/{v}/set-default``, ``DELETE /models/{m}/{v}``, ``DELETE /models/{m}``.

TorchServe's worker-scaling arguments (``initial_workers``, ``batch_size``...) are accepted
and ignored: every worker serves every version, batching comes from the archive.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from torchferry.errors import Conflict, InvalidInput, TorchferryError
from torchferry.serving.lifecycle.state import check_model_name
from torchferry.serving.management.answers import (
    JSONResponse,
    TorchServeRoute,
    parse_version,
    read_json,
)
from torchferry.serving.management.context import Management, management_of
from torchferry.serving.management.describe import describe
from torchferry.serving.management.remote import fetch_remote
from torchferry.serving.management.remote_policy import is_remote
from torchferry.serving.management.sources import resolve_source

log = logging.getLogger("torchferry.management")

router = APIRouter(tags=["TorchServe management"], route_class=TorchServeRoute)

#: Names that are safe as a store folder and in a URL path.
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def _describe_versions(management: Management, name: str, versions: list[int]) -> Response:
    known = management.require(name)
    default = management.default(name)
    workers = management.settings.workers
    return JSONResponse([describe(known[v], v == default, workers) for v in versions])


@router.get("/models", summary="List models")
async def list_models(request: Request, limit: int = 100, next_page_token: int = 0) -> Response:
    management = management_of(request)
    names = management.names()
    limit = 100 if not 0 <= limit <= 100 else limit
    start = max(0, next_page_token)
    end = min(len(names), start + limit)
    body: dict[str, Any] = {}
    if end < len(names):
        body["nextPageToken"] = str(end)
    models = []
    for name in names[start:end]:
        versions = management.versions(name)
        default = management.default(name)
        shown = versions.get(default) if default is not None else None
        info = shown or list(versions.values())[-1]
        models.append({"modelName": name, "modelUrl": describe(info, True, 1)["modelUrl"]})
    body["models"] = models
    return JSONResponse(body)


@router.post("/models", summary="Register a model version")
async def register(
    request: Request,
    url: str | None = None,
    model_name: str | None = None,
    synchronous: str | None = None,
    initial_workers: str | None = None,
    batch_size: str | None = None,
    max_batch_delay: str | None = None,
    response_timeout: str | None = None,
    handler: str | None = None,
    runtime: str | None = None,
) -> Response:
    arguments: dict[str, Any] = {"url": url, "model_name": model_name, "synchronous": synchronous}
    # TorchServe also takes the arguments as a JSON body
    if request.headers.get("content-type", "").startswith("application/json"):
        document = await read_json(request)
        if document is not None and not isinstance(document, dict):
            raise InvalidInput("the request body must be a JSON object")
        arguments.update({k: v for k, v in (document or {}).items() if k in arguments})
    if not arguments["url"]:
        raise InvalidInput("Parameter url is required.")
    name = str(arguments["model_name"]) if arguments["model_name"] else None
    if name is not None:
        check_model_name(name)
    wait = _flag(arguments["synchronous"], "synchronous", default=True)

    management = management_of(request)
    staged_name, version = await _stage(management, str(arguments["url"]), name)
    if not wait:
        _register_in_background(management, staged_name, version)
        return JSONResponse(
            {
                "status": "Processing worker updates...",
                "modelName": staged_name,
                "modelVersion": str(version),
            },
            status_code=202,
        )
    await management.fleet.load(staged_name, version)
    workers = management.settings.workers
    return JSONResponse(
        {
            "status": f'Model "{staged_name}" Version: {version} registered with '
            f"{workers} initial workers",
            "modelName": staged_name,
            "modelVersion": str(version),
        }
    )


async def _stage(management: Management, url: str, name: str | None) -> tuple[str, int]:
    """Stage the source ``url`` names: a path under the source roots, or a remote file
    fetched (when the server's policy allows it) and removed once staged."""
    if not is_remote(url):
        return await management.fleet.stage(resolve_source(url, management.settings), name)
    async with fetch_remote(url, management.settings) as fetched:
        return await management.fleet.stage(fetched.path, name or fetched.name, shown=fetched.shown)


def _flag(value: Any, what: str, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise InvalidInput(f"{what}={value!r}: expected true or false")


def _register_in_background(management: Management, name: str, version: int) -> None:
    key = (name, version)
    if key in management.registering:
        return  # the same version is already on its way

    async def load() -> None:
        try:
            await management.fleet.load(name, version)
        except TorchferryError as exc:
            log.error(
                "registering model %s version %d failed: %s",
                name,
                version,
                exc.message,
                extra={"event": "register_failed", "model": name, "version": version},
            )
        except Exception:
            log.exception("registering model %s version %d failed", name, version)
        finally:
            management.registering.pop(key, None)

    management.registering[key] = asyncio.get_running_loop().create_task(load())


@router.get("/models/{model_name}", summary="Describe a model's default version")
async def describe_model(request: Request, model_name: str) -> Response:
    management = management_of(request)
    versions = management.require(model_name)
    default = management.default(model_name)
    chosen = default if default in versions else list(versions)[-1]
    return _describe_versions(management, model_name, [chosen])


@router.get("/models/{model_name}/all", summary="Describe every version of a model")
async def describe_all(request: Request, model_name: str) -> Response:
    management = management_of(request)
    return _describe_versions(management, model_name, list(management.require(model_name)))


@router.get("/models/{model_name}/{model_version}", summary="Describe a version")
async def describe_version(request: Request, model_name: str, model_version: str) -> Response:
    management = management_of(request)
    version = management.require_named(model_name, model_version)
    return _describe_versions(management, model_name, [version])


@router.put("/models/{model_name}/{model_version}/set-default", summary="Set the default version")
async def set_default(request: Request, model_name: str, model_version: str) -> Response:
    management = management_of(request)
    version = management.require_named(model_name, model_version)
    await management.fleet.set_default(model_name, version)
    return JSONResponse(
        {"status": f'Default version successfully updated for model "{model_name}" to "{version}"'}
    )


async def _unregister(management: Management, name: str, version: int) -> Response:
    versions = management.require(name)
    management.require_version(name, version)
    others = [v for v, info in versions.items() if v != version and info.state == "ready"]
    if version == management.default(name) and others:
        # as TorchServe: unversioned traffic must not move to another version by accident
        raise Conflict(
            f"Cannot remove default version {version} for model {name}: set another default "
            f"first (PUT /models/{name}/{others[-1]}/set-default)"
        )
    await management.fleet.unload(name, version)
    return JSONResponse({"status": f'Model "{name}" unregistered'})


@router.delete("/models/{model_name}", summary="Unregister a model's default version")
async def unregister_default(request: Request, model_name: str) -> Response:
    management = management_of(request)
    versions = management.require(model_name)
    default = management.default(model_name)
    return await _unregister(
        management, model_name, default if default is not None else list(versions)[-1]
    )


@router.delete("/models/{model_name}/{model_version}", summary="Unregister a version")
async def unregister_version(request: Request, model_name: str, model_version: str) -> Response:
    management = management_of(request)
    management.require(model_name)
    return await _unregister(management, model_name, parse_version(model_name, model_version))
