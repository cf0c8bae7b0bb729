"""The console's files on the management app (built as the supervisor builds it, with
``--auth``): no token needed for them while every API call still needs one; the security
headers on every answer; the redirect relative; a traversal or an unknown name is a 404."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, cast

import httpx
import pytest

from torchferry.serving.auth.keyfile import create_token
from torchferry.serving.auth.keyring import KeyRing
from torchferry.serving.auth.scopes import Scopes
from torchferry.serving.console.app import console_needs, management_with_console
from torchferry.serving.console.files import CONTENT_SECURITY_POLICY
from torchferry.serving.management.api import FleetAPI
from torchferry.serving.settings import ServerSettings


class NoFleet:
    """Never reached: every request here is answered before a route runs."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the fleet was asked for {name}")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.json"
    create_token(key_file, ["infer"], timedelta(hours=1), "infer-only")
    settings = ServerSettings(auth=True, key_file=key_file)
    return management_with_console(cast(FleetAPI, NoFleet()), settings, KeyRing(key_file))


def call(app, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8081") as c:
            return await c.request(method, path, headers=headers)

    return asyncio.run(go())


def assert_secured(answer: httpx.Response) -> None:
    assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["cache-control"] == "no-cache"


def test_the_page_needs_no_token_but_the_api_does(app):
    page = call(app, "GET", "/console/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert b"<html" in page.content
    assert_secured(page)
    head = call(app, "HEAD", "/console/")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == page.headers["content-length"]
    for path in ("/models", "/console/api/overview", "/console/api/whoami"):
        refused = call(app, "GET", path)
        assert refused.status_code == 401, path
    # the console's API answers in its own shape; the management API in TorchServe's
    assert "error" in call(app, "GET", "/console/api/overview").json()
    assert "message" in call(app, "GET", "/models").json()


def test_the_redirect_is_relative(app):
    answer = call(app, "GET", "/console")
    assert answer.status_code == 307
    assert answer.headers["location"] == "console/"
    assert_secured(answer)


@pytest.mark.parametrize(
    "path",
    [
        "/console/static/nothing.js",
        "/console/static/",
        "/console/static/.hidden",
        "/console/static/..%2Ffiles.py",
        "/console/static/%2e%2e/api.py",
        "/console/static/a%2Findex.html",
        "/console/static/index.html%00.js",
        "/console/static/..\\files.py",
    ],
)
def test_nothing_outside_the_static_folder(app, path):
    answer = call(app, "GET", path)
    assert answer.status_code == 404, answer.text
    assert "no such console file" in answer.json()["error"]
    assert_secured(answer)


def test_static_files_and_methods(app):
    index = call(app, "GET", "/console/static/index.html")
    assert index.status_code == 200
    assert index.content == call(app, "GET", "/console/").content
    posted = call(app, "POST", "/console/")
    assert posted.status_code == 405
    assert posted.headers["allow"] == "GET, HEAD"


def test_browser_checks_still_apply(app):
    rebound = call(app, "GET", "/console/", {"host": "rebound.evil.example:8081"})
    assert rebound.status_code == 403


def test_under_a_route_prefix(app):
    """Ray Serve mounts the management app under ``/manage``: the same answers there."""
    transport = httpx.ASGITransport(app=app, root_path="/manage")

    async def go(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8081") as c:
            return await c.get(path)

    redirect = asyncio.run(go("/manage/console"))
    assert (redirect.status_code, redirect.headers["location"]) == (307, "console/")
    assert asyncio.run(go("/manage/console/")).status_code == 200
    refused = asyncio.run(go("/manage/console/api/whoami"))
    assert refused.status_code == 401
    # the console's shape under the prefix too; the management API's own stays TorchServe's
    assert set(refused.json()) == {"error"}
    assert asyncio.run(go("/manage/models")).json()["code"] == 401
    assert set(asyncio.run(go("/manage/console/api/nothing")).json()) == {"error"}


def test_one_error_shape_per_path_for_browser_refusals(app):
    origin = {"origin": "https://evil.example"}
    read = call(app, "GET", "/console/api/whoami", origin)
    assert read.status_code == 403
    assert set(read.json()) == {"error"}
    assert "may not change models" not in read.json()["error"]
    assert "another origin (https://evil.example)" in read.json()["error"]
    assert call(app, "GET", "/models", origin).json()["code"] == 403
    assert set(call(app, "GET", "/v2/repository/index", origin).json()) == {"error"}


def test_every_console_answer_is_neither_sniffed_nor_stored(app):
    for path in ("/console/api/overview", "/console/api/whoami", "/console/api/try/predict/m"):
        answer = call(app, "GET", path)
        assert answer.headers["x-content-type-options"] == "nosniff", path
        assert answer.headers["cache-control"] == "no-store", path
    assert "x-content-type-options" not in call(app, "GET", "/models").headers


@pytest.mark.parametrize(
    ("method", "path", "needs"),
    [
        ("GET", "/console/api/whoami", None),
        ("POST", "/console/api/try/predict/m", None),
        ("POST", "/console/api/try-grpc/m", None),
        ("GET", "/console/api/overview", "the manage or metadata scope"),
        ("GET", "/console/api/try/predict/m", "the manage or metadata scope"),
        ("POST", "/console/api/whoami", "the manage scope"),
        ("POST", "/models/m/console/api/try/x", "the manage scope"),
        ("POST", "/models/m/rollout/promote", "the manage scope"),
    ],
)
def test_what_an_infer_only_token_may_call(method, path, needs):
    assert console_needs(Scopes(infer_all=True), method, path) == needs


@pytest.mark.parametrize(
    ("scopes", "needs"),
    [
        (Scopes(metadata=True), "an infer scope (infer or infer:MODEL)"),
        (Scopes(manage=True), "an infer scope (infer or infer:MODEL)"),
        (Scopes(infer_models=frozenset({"m"})), None),
    ],
)
def test_try_needs_some_infer_scope(scopes, needs):
    assert console_needs(scopes, "POST", "/console/api/try/predict/m") == needs
    assert console_needs(scopes, "GET", "/console/api/whoami") is None
