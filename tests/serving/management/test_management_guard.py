"""Browsers kept out of the management API: a cross-site Origin or a rebound host name is
refused with 403 before any route runs; curl-like clients (no Origin) pass."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.responses import PlainTextResponse

from torchferry.serving.management.guard import RefuseBrowsers


async def _inner(scope, receive, send) -> None:
    await PlainTextResponse("changed")(scope, receive, send)


def call(loopback: bool, path: str, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=RefuseBrowsers(_inner, loopback=loopback))

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8081") as c:
            return await c.post(path, headers=headers)

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("loopback", "headers", "status"),
    [
        (True, {}, 200),  # curl, an SDK, a CI job
        (True, {"host": "localhost:8081"}, 200),
        (True, {"host": "[::1]:8081"}, 200),
        (True, {"origin": "http://127.0.0.1:8081"}, 200),  # the listener's own page
        (True, {"origin": "http://evil.example"}, 403),  # a cross-site form or fetch
        (True, {"origin": "null"}, 403),  # a sandboxed frame
        (True, {"host": "rebound.evil.example:8081"}, 403),  # DNS rebinding
        (False, {"host": "models.internal:8081"}, 200),  # an explicit, non-loopback host
        (False, {"host": "models.internal:8081", "origin": "http://evil.example"}, 403),
    ],
)
def test_browser_requests_are_refused(loopback, headers, status):
    answer = call(loopback, "/models?url=x.mar", headers)
    assert answer.status_code == status, answer.text
    if status == 403:
        body = answer.json()
        assert body["code"] == 403 and body["type"] == "ForbiddenException", body


def test_triton_routes_answer_in_tritons_shape():
    answer = call(True, "/v2/repository/models/m/unload", {"origin": "http://evil.example"})
    assert answer.status_code == 403
    assert "web pages" in answer.json()["error"]
