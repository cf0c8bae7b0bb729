"""The try-it forwarder's own refusals, on the management app with a server whose
inference listener is not there (nothing listens on its port), or that it cannot reach
(mutual TLS, Ray Serve); and the console without auth and without a supervisor (Ray)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from torchferry.serving.console.proxy import inference_path
from torchferry.serving.console.server_view import WorkerView
from torchferry.serving.management.api import FleetAPI
from torchferry.serving.management.app import management_app
from torchferry.serving.process import free_ports
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
    app = management_app(cast(FleetAPI, NoFleet()), ServerSettings(), server=server)
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
