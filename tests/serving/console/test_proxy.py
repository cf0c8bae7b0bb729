"""The try-it forwarder's own refusals, on the management app with a server whose
inference listener is not there (nothing listens on its port), or that it cannot reach
(mutual TLS, Ray Serve); and the console without auth and without a supervisor (Ray)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from torchferry.serving.console.app import management_with_console
from torchferry.serving.console.proxy import MAX_ANSWER_BYTES, MAX_CONCURRENT, inference_path
from torchferry.serving.console.server_view import WorkerView
from torchferry.serving.management.api import FleetAPI
from torchferry.serving.process import free_ports, serve_in_thread
from torchferry.serving.settings import ServerSettings


class NoFleet:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the fleet was asked for {name}")


@dataclass
class Server:
    """What a supervisor offers the console, for a listener nobody runs."""

    worker_settings: ServerSettings
    workers: list[WorkerView] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    metrics_dir: Path | None = None


def call(settings: ServerSettings | None, path: str, body: bytes | None = b"{}") -> httpx.Response:
    """POST ``body`` to ``path`` (GET without one) on a management app without auth."""
    server = Server(settings) if settings is not None else None
    app = management_with_console(cast(FleetAPI, NoFleet()), ServerSettings(), server=server)
    transport = httpx.ASGITransport(app=app)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8081") as c:
            if body is None:
                return await c.get(path)
            return await c.post(path, content=body, headers={"content-type": "application/json"})

    return asyncio.run(go())


def test_without_auth_and_without_a_supervisor():
    assert call(None, "/console/api/whoami", None).json() == {
        "auth": False, "token": None, "scopes": [], "can_read": True, "can_manage": True,
    }  # fmt: skip
    server = call(None, "/console/api/server", None).json()
    assert (server["workers"], server["listeners"], server["restarts"]) == (None, [], 0)
    assert server["uptime_s"] >= 0 and server["version"]


def test_an_unreachable_listener_is_a_502():
    [port] = free_ports(1)
    answer = call(ServerSettings(host="0.0.0.0", port=port), "/console/api/try/predict/m")
    assert answer.status_code == 502
    assert answer.headers["x-torchferry-proxy"] == "error"
    assert f"http://127.0.0.1:{port}/predict/m cannot be reached" in answer.json()["error"]


def test_mutual_tls_and_ray_are_501(tmp_path):
    mtls = ServerSettings.model_construct(tls_client_ca=tmp_path / "ca.pem")
    answer = call(mtls, "/console/api/try/predict/m")
    assert answer.status_code == 501 and "mutual TLS" in answer.json()["error"]
    assert answer.headers["x-torchferry-proxy"] == "error"
    ray = call(None, "/console/api/try/predict/m")
    assert ray.status_code == 501 and "Ray Serve" in ray.json()["error"]


def test_a_body_over_the_limit_is_a_413():
    [port] = free_ports(1)
    settings = ServerSettings(port=port, max_body_bytes=10)
    answer = call(settings, "/console/api/try/predict/m", b"x" * 11)
    assert answer.status_code == 413 and "10 bytes" in answer.json()["error"]


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("v2/models/m/infer", True),
        ("v2/models/m/versions/2/infer", True),
        ("v1/models/m:predict", True),
        ("predict", True),
        ("predict/m", True),
        ("predictions/m/1.0", True),
        ("v2/models/../../models", False),
        ("predict/./m", False),
        ("predictions//m", False),
        ("v2/health/ready", False),
        ("models", False),
        ("predictor", False),
        ("", False),
    ],
)
def test_only_inference_routes(path, allowed):
    if allowed:
        assert inference_path(path) == path
    else:
        with pytest.raises(Exception, match="not an inference route"):
            inference_path(path)


async def echo(scope: Any, receive: Any, send: Any) -> None:
    """The inference listener's stand-in: answers with what reached it (``/predict/big``:
    an answer over the console's cap; ``/predict/slow``: after a while)."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/predict/big":
        body = b"x" * (MAX_ANSWER_BYTES + 1)
    else:
        if scope["path"] == "/predict/slow":
            await asyncio.sleep(0.5)
        headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"]}
        body = json.dumps(
            {
                "raw_path": scope["raw_path"].decode(),
                "query": scope["query_string"].decode(),
                "content_type": headers.get("content-type"),
            }
        ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerSettings]:
    [port] = free_ports(1)
    with serve_in_thread(echo, port):
        yield ServerSettings(port=port)


def post_all(
    settings: ServerSettings, calls: list[tuple[str, dict[str, Any]]]
) -> list[httpx.Response]:
    """POST each ``(path, headers)`` at once to one management app."""
    app = management_with_console(
        cast(FleetAPI, NoFleet()), ServerSettings(), server=Server(settings)
    )
    transport = httpx.ASGITransport(app=app)

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8081") as c:
            posts = [c.post(path, content=b"{}", headers=headers) for path, headers in calls]
            return list(await asyncio.gather(*posts))

    return asyncio.run(go())


def test_the_path_is_forwarded_as_it_was_encoded(upstream):
    paths = ["v2/models/a%3Fb/infer", "v2/models/a%23b/infer", "predict/a%2Fb", "predict/a%01"]
    answers = post_all(upstream, [(f"/console/api/try/{p}?k=%3Fv", {}) for p in paths])
    for path, answer in zip(paths, answers, strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.json()["raw_path"] == f"/{path}"
        assert answer.json()["query"] == "k=%3Fv"
        assert answer.headers["content-security-policy"] == "sandbox"
        assert answer.headers["x-content-type-options"] == "nosniff"
    # checked decoded: an encoded way up is still refused
    [up] = post_all(upstream, [("/console/api/try/v2/models/%2e%2e/%2e%2e/models", {})])
    assert up.status_code == 404 and "not an inference route" in up.json()["error"]


def test_a_content_type_httpx_cannot_write_is_not_a_500(upstream):
    [answer] = post_all(
        upstream, [("/console/api/try/predict/m", {"content-type": "text/plain; é".encode()})]
    )
    assert answer.status_code in (200, 400), answer.text


def test_at_most_four_calls_at_once(upstream):
    answers = post_all(upstream, [("/console/api/try/predict/slow", {})] * (MAX_CONCURRENT + 1))
    assert sorted(a.status_code for a in answers) == [200] * MAX_CONCURRENT + [503]
    [busy] = [a for a in answers if a.status_code == 503]
    assert busy.headers["retry-after"] == "1" and "try again" in busy.json()["error"]


def test_an_answer_over_the_cap_is_a_502(upstream):
    [answer] = post_all(upstream, [("/console/api/try/predict/big", {})])
    assert answer.status_code == 502
    assert "too large for the console" in answer.json()["error"]
