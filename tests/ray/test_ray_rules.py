"""What torchferry on Ray refuses before Ray starts, and what it hands Serve, without a Ray
cluster: management's guard, TLS as Serve's proxy does it, no ``model_dir``, and a replica
that cannot be brought up to the fleet's state."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from certs import make_certs
from pydantic import ValidationError
from ray.serve.config import HTTPOptions

from torchferry.errors import TorchferryError
from torchferry.ray.config import RaySettings
from torchferry.ray.management import ReplicaLinks, admit
from torchferry.ray.run import _last_line
from torchferry.serving.lifecycle.fleet import Fleet
from torchferry.serving.settings import ServerSettings


def ray_settings(**server: object) -> RaySettings:
    return RaySettings(server=ServerSettings.model_validate({"store": "/s", **server}))


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"host": "0.0.0.0"}, "turn on tokens (--auth"),
        ({"host": "10.1.2.3"}, "answers on Serve's proxy on 10.1.2.3"),
        ({"model_dir": "/m"}, "--model-dir (model_dir) is not served on Ray"),
        ({"tls_client_ca": "/ca.pem"}, "mutual TLS (--tls-client-ca) is not available on Ray"),
        ({"tls_cert": "/c.pem", "tls_key": "/k.pem"}, "gRPC proxy has no TLS"),
    ],
)
def test_refused_before_anything_starts(server, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        ray_settings(**server)


def test_management_on_a_public_proxy_needs_tokens_or_is_off():
    assert ray_settings(host="0.0.0.0", auth=True).management
    assert not RaySettings(
        management=False, server=ServerSettings(store=Path("/s"), host="0.0.0.0")
    ).management
    assert ray_settings(host="127.0.0.1").management  # a loopback proxy: the Host check holds
    assert ray_settings(host="::1").management


def test_the_proxy_serves_https_with_the_servers_certificate(tmp_path):
    certs = make_certs(tmp_path)
    settings = ray_settings(tls_cert=certs.server_cert, tls_key=certs.server_key, grpc_port=None)
    options = settings.proxy_options()
    assert "grpc_options" not in options
    http = HTTPOptions(**options["http_options"])  # Serve's own model takes them
    assert (http.ssl_certfile, http.ssl_keyfile) == (
        str(certs.server_cert),
        str(certs.server_key),
    )
    assert HTTPOptions(**ray_settings().proxy_options()["http_options"]).ssl_certfile is None


def test_a_replica_that_cannot_be_staged_is_an_error_naming_the_version(tmp_path):
    """model_dir mode (no store): the fleet serves what the first replica had; one without
    it cannot be given it, and says which version."""
    links = ReplicaLinks()
    fleet = Fleet(links, ServerSettings(model_dir=tmp_path))

    async def join_two() -> None:
        first = links.join("a")
        await admit(fleet, links, first, {"models": [{"name": "digits", "version": 1}]})
        assert first.admitted
        second = links.join("b")
        with pytest.raises(TorchferryError, match="digits version 1 cannot be staged in replica 2"):
            await admit(fleet, links, second, {"models": []})
        assert not second.admitted

    asyncio.run(join_two())


def test_a_failed_deploy_is_told_by_the_replicas_own_error():
    """Serve's error quotes the replica's traceback and ends with its own summary."""
    serve_error = RuntimeError(
        "Traceback (most recent call last):\n"
        '  File "loading.py", line 9, in load\n'
        "    raise ArchiveError(\n"
        "torchferry.errors.ArchiveError: /s/digits/1: file 'model.onnx' does not match\n"
        "Deploying application torchferry failed: Failed to update the deployments"
    )
    assert _last_line(serve_error) == "/s/digits/1: file 'model.onnx' does not match"
    assert _last_line(RuntimeError("port taken\n")) == "port taken"
