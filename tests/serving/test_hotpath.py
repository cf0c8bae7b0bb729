"""The lean path answers exactly as FastAPI does: the same status, headers and body, and the
same route in the scope, for hot routes (called directly) and for everything else (handed
to FastAPI). In process, over ASGI: each request goes once through the app ``build_app``
returns and once through the bare FastAPI app behind it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import APIRouter, FastAPI, HTTPException, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from torchferry.errors import Overloaded
from torchferry.serving.app import build_app
from torchferry.serving.hotpath import HotPath, hot
from torchferry.serving.limits import BodyLimit
from torchferry.serving.protocols import v2
from torchferry.serving.repository import ModelRepository
from torchferry.serving.settings import ServerSettings

ROW = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
RAW = orjson.dumps({"inputs": [{**{k: v for k, v in ROW.items() if k != "data"},
                                "parameters": {"binary_data_size": 16}}]})  # fmt: skip
BINARY = RAW + b"\x00\x00\x80?" * 4
NEGATIVE = {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [-1, -1]}  # faulty raises
BIN_HEADERS = {"Inference-Header-Content-Length": str(len(RAW))}
JSON = {"content-type": "application/json"}

#: (method, path, body, headers, whether the lean path answers it)
CASES: list[tuple[str, str, bytes, dict[str, str], bool]] = [
    ("POST", "/v2/models/adder/infer", orjson.dumps({"inputs": [ROW]}), JSON, True),
    ("POST", "/v2/models/adder/versions/1/infer", BINARY, BIN_HEADERS, True),
    ("POST", "/v2/models/adder/versions/9/infer", BINARY, BIN_HEADERS, True),  # 404
    ("POST", "/v2/models/nope/infer", b"{}", JSON, True),  # 404
    ("POST", "/v2/models/adder/infer", b"{not json", JSON, True),  # 400
    ("POST", "/v2/models/adder/infer", BINARY, {"Inference-Header-Content-Length": "x"}, True),
    ("POST", "/v2/models/faulty/infer", orjson.dumps({"inputs": [NEGATIVE]}), JSON, True),  # 500
    ("POST", "/v1/models/adder:predict", orjson.dumps({"instances": [[1, 2, 3, 4]]}), JSON, True),
    ("POST", "/v1/models/adder/versions/2:predict", b'{"inputs": [[1, 2, 3, 4]]}', JSON, True),
    ("POST", "/v1/models/adder/predictions", b'{"instances": [[1, 2, 3, 4]]}', JSON, True),
    ("POST", "/v1/models/adder/versions/1/predictions", b"[]", JSON, True),  # 400
    ("POST", "/predict", b'{"data": [[1, 2, 3, 4]]}', JSON, True),  # 400: several models
    ("POST", "/predict/adder", b'{"data": [[1, 2, 3, 4]]}', JSON, True),
    ("POST", "/predict/adder/versions/2", b'{"data": [[1, 2, 3, 4]]}', JSON, True),
    ("POST", "/predict/nope", b'{"data": [[1, 2, 3, 4]]}', JSON, True),
    ("POST", "/predictions/adder", b"[[1, 2, 3, 4]]", JSON, True),
    ("PUT", "/predictions/adder/1.0", b"[[1, 2, 3, 4]]", JSON, True),
    ("POST", "/predictions/adder/7", b"[[1, 2, 3, 4]]", JSON, True),  # TorchServe's 404 shape
    ("POST", "/predictions/nope", b"[[1, 2, 3, 4]]", JSON, True),
    # FastAPI's: other routes, unknown routes and methods, trailing slashes
    ("GET", "/v2/models/adder/infer", b"", {}, False),  # 405
    ("DELETE", "/predict/adder", b"", {}, False),  # 405
    ("POST", "/v2/models/adder/infer/", b"{}", JSON, False),  # redirect
    ("POST", "/v2/models/adder/versions//infer", b"{}", JSON, False),  # 404
    ("POST", "/v2/models/stats", b"", {}, False),  # 405
    ("GET", "/v2/models/adder", b"", {}, False),
    ("GET", "/v2/health/ready", b"", {}, False),
    ("GET", "/ping", b"", {}, False),
    ("GET", "/nowhere", b"", {}, False),  # 404
    ("GET", "/openapi.json", b"", {}, False),
]


class Recorder:
    """An ASGI app around another that keeps the scope of the last request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.scope: Scope = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def apps(model_store) -> Iterator[tuple[HotPath, asyncio.AbstractEventLoop]]:
    settings = ServerSettings(store=model_store.root, threads=1)
    repository = ModelRepository(settings)
    repository.load_store(model_store, ["adder", "faulty"])
    app = build_app(settings, repository).app  # the lean path, inside the request records
    loop = asyncio.new_event_loop()
    loop.run_until_complete(repository.start())
    yield app, loop
    loop.run_until_complete(repository.close())
    loop.close()


async def _send(app: ASGIApp, method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
    recorder = Recorder(app)
    transport = httpx.ASGITransport(app=recorder, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        answer = await client.request(method, path, content=body, headers=headers)
    return answer, recorder.scope


@pytest.mark.parametrize(("method", "path", "body", "headers", "lean"), CASES)
def test_same_answer_and_route_as_fastapi(apps, method, path, body, headers, lean):
    app, loop = apps
    ours, our_scope = loop.run_until_complete(_send(app, method, path, body, headers))
    theirs, their_scope = loop.run_until_complete(_send(app.app, method, path, body, headers))
    assert (ours.status_code, ours.content) == (theirs.status_code, theirs.content)
    assert ours.headers.multi_items() == theirs.headers.multi_items()
    assert our_scope.get("route") is their_scope.get("route")
    if "route" in our_scope:
        assert our_scope["route"].path == our_scope["route"].path_format  # the template
        assert our_scope["path_params"] == their_scope["path_params"]
    # FastAPI's exception middleware marks the scope: the lean path never reaches it
    assert ("starlette.exception_handlers" not in our_scope) is lean


def test_hot_routes_are_the_inference_routes(apps):
    app, _ = apps
    spec = app.app.openapi()["paths"]
    hot_routes = {
        (method, route.path)
        for route in app.routes
        if getattr(route, "endpoint", None) is not None
        and getattr(route.endpoint, "__torchferry_hot__", False)
        for method in route.methods
    }
    assert {path for _, path in hot_routes} == {
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer",
        "/v1/models/{model_name}:predict",
        "/v1/models/{model_name}/versions/{model_version}:predict",
        "/v1/models/{model_name}/predictions",
        "/v1/models/{model_name}/versions/{model_version}/predictions",
        "/predict",
        "/predict/{model_name}",
        "/predict/{model_name}/versions/{model_version}",
        "/predictions/{model_name}",
        "/predictions/{model_name}/{model_version}",
    }
    for method, path in hot_routes:  # still described by /docs
        assert spec[path][method.lower()]["summary"], (method, path)


def test_chunked_body_over_the_limit_is_413_on_the_lean_path(model_store):
    settings = ServerSettings(store=model_store.root, threads=1, max_body_bytes=64)
    repository = ModelRepository(settings)
    repository.load_store(model_store, ["adder"])
    app = build_app(settings, repository).app  # the lean path, inside the request records

    async def scenario() -> None:
        await repository.start()
        try:
            for path, error in [
                ("/v2/models/adder/infer", lambda a: a.json()["error"]),
                ("/predictions/adder", lambda a: a.json()["message"]),  # TorchServe's shape
            ]:

                async def chunks() -> Any:
                    for _ in range(4):
                        yield b" " * 32  # no Content-Length: counted as it is read

                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
                    streamed = await client.post(path, content=chunks())
                    assert streamed.status_code == 413
                    assert "exceeds the limit of 64 bytes" in error(streamed)
                    declared = await client.post(path, content=b" " * 65)
                    assert declared.status_code == 413
                    assert declared.headers["connection"] == "close"
        finally:
            await repository.close()

    asyncio.run(scenario())


# -- the lean path on its own: error handling and what it refuses to take -------------------


async def _raises(request: Request, kind: str) -> Response:
    if kind == "overloaded":
        raise Overloaded("busy", retry_after=2.0)
    if kind == "teapot":
        raise HTTPException(418, "short and stout", headers={"X-Kind": "teapot"})
    raise ValueError("a bug")


def test_errors_answered_as_fastapi_answers_them(apps):
    app, loop = apps
    fresh = build_app(app.state.settings, app.state.repository).app
    router = APIRouter()
    router.post("/test/raise/{kind}")(hot(_raises))
    fresh.app.include_router(router)
    both = HotPath(fresh.app, [*fresh.routes, *router.routes], BodyLimit(1024))
    for kind in ("overloaded", "teapot", "bug"):
        path = f"/test/raise/{kind}"
        ours, scope = loop.run_until_complete(_send(both, "POST", path, b"", {}))
        theirs, _ = loop.run_until_complete(_send(fresh.app, "POST", path, b"", {}))
        assert "starlette.exception_handlers" not in scope
        assert (ours.status_code, ours.content) == (theirs.status_code, theirs.content)
        assert ours.headers.multi_items() == theirs.headers.multi_items()
    assert ours.status_code == 500


def test_an_endpoint_that_needs_fastapi_cannot_be_hot(apps):
    app, _ = apps
    router = APIRouter()

    async def with_query(request: Request, model_name: str, limit: int = 3) -> Response:
        return Response()

    router.post("/test/{model_name}")(hot(with_query))
    with pytest.raises(TypeError, match="query parameters"):
        HotPath(app.app, router.routes, BodyLimit(1024))


def test_a_route_before_a_hot_one_keeps_its_paths(apps):
    """Routes are alternatives in FastAPI's order: a path an earlier route takes is not hot."""
    app, loop = apps
    shadow = APIRouter()

    @shadow.post("/v2/models/special/infer")
    async def special() -> Response:
        return Response(b"special")

    fastapi = FastAPI()
    fastapi.state.plane = app.state.plane
    fastapi.include_router(shadow)
    fastapi.include_router(v2.router)
    both = HotPath(fastapi, [*shadow.routes, *v2.router.routes], BodyLimit(1024))
    body, headers = orjson.dumps({"inputs": [ROW]}), JSON
    taken, scope = loop.run_until_complete(
        _send(both, "POST", "/v2/models/special/infer", body, headers)
    )
    assert taken.content == b"special" and scope["route"] is shadow.routes[0]
    assert "starlette.exception_handlers" in scope  # FastAPI answered
    hot_answer, scope = loop.run_until_complete(
        _send(both, "POST", "/v2/models/adder/infer", body, headers)
    )
    assert hot_answer.status_code == 200 and scope["route"].path == "/v2/models/{model_name}/infer"
    assert "starlette.exception_handlers" not in scope
