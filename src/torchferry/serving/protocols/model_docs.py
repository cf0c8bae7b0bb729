"""Each model's own OpenAPI document and a Swagger page for it:
``/v2/models/{m}[/versions/{v}]/docs/openapi.json`` and ``.../docs``.

The document (``model_openapi``) describes the JSON inference routes with the version's
real signature; without a version it describes the default version (the one unversioned
requests reach when the model's traffic is not split), at the unversioned paths.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse

from torchferry.serving.protocols.common import JSONResponse, Protocol, plane_of
from torchferry.serving.protocols.model_openapi import model_openapi
from torchferry.serving.protocols.openapi_schemas import READ_STATUSES, errors

router = APIRouter(tags=["Per-model documents"])
_READ = errors(READ_STATUSES)
_DOCUMENT = {200: {"description": "An OpenAPI 3.1 document", "model": dict[str, Any]}, **_READ}
# the page's errors are JSON, as everywhere: named outright, since FastAPI gives a model's
# answers the route's media type (text/html here)
_PAGE = {
    200: {"description": "Swagger UI over the model's document", "content": {"text/html": {}}},
    **{
        status: {
            "description": entry["description"],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
        for status, entry in _READ.items()
    },
}


def _document(request: Request, name: str, version: str | None) -> JSONResponse:
    plane = plane_of(request)
    # without a version, the default one: never a weighted route's random pick
    model = plane.resolve(name, version if version is not None else plane.default_version(name))
    shown = None if version is None else model.version
    handler = model.manifest.handler.name
    return JSONResponse(model_openapi(model.name, shown, model.signature, handler))


def _page(request: Request, name: str, version: str | None) -> HTMLResponse:
    model = plane_of(request).resolve(name, version)  # 404 for an unknown model or version
    at = "" if version is None else f"/versions/{model.version}"
    return get_swagger_ui_html(
        openapi_url=f"/v2/models/{name}{at}/docs/openapi.json",
        title=f"{name}{at.replace('/versions/', ' version ')}: torchferry",
    )


@router.get(
    "/v2/models/{model_name}/docs/openapi.json",
    summary="The model's OpenAPI document (default version), its signature in the schemas",
    responses=_DOCUMENT,
)
async def document(request: Request, model_name: str) -> JSONResponse:
    return _document(request, model_name, None)


@router.get(
    "/v2/models/{model_name}/versions/{model_version}/docs/openapi.json",
    summary="One version's OpenAPI document, its signature in the schemas",
    responses=_DOCUMENT,
)
async def version_document(request: Request, model_name: str, model_version: str) -> JSONResponse:
    return _document(request, model_name, model_version)


@router.get(
    "/v2/models/{model_name}/docs",
    summary="Swagger UI over the model's document",
    response_class=HTMLResponse,
    responses=_PAGE,
)
async def page(request: Request, model_name: str) -> HTMLResponse:
    return _page(request, model_name, None)


@router.get(
    "/v2/models/{model_name}/versions/{model_version}/docs",
    summary="Swagger UI over one version's document",
    response_class=HTMLResponse,
    responses=_PAGE,
)
async def version_page(request: Request, model_name: str, model_version: str) -> HTMLResponse:
    return _page(request, model_name, model_version)


class ModelDocs(Protocol):
    """Not a wire protocol: the documents that describe each model's JSON routes."""

    name = "model-docs"
    router = router
