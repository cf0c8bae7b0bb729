"""TLS and mutual TLS on every listener (HTTP, gRPC, metrics, management), with real clients
(httpx, tritonclient's gRPC client) and certificates made by ``tests/certs.py``; the files
are swapped while the server runs and the new certificate is served without a restart."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from certs import Certs, make_certs
from tritonclient.utils import InferenceServerException

from torchferry.cli import main
from torchferry.client import Client
from torchferry.serving import tls
from torchferry.serving.process import ServerProcess, serve_in_subprocess

#: The TLS server's --header-timeout, which bounds its TLS handshakes too.
HANDSHAKE_TIMEOUT = 1.0

#: The TLS server's --keep-alive-timeout.
KEEP_ALIVE_TIMEOUT = 1.0


def client_context(certs: Certs, with_cert: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if with_cert:
        context.load_cert_chain(certs.client_cert, certs.client_key)
    return context


def served_files(certs: Certs, folder: Path) -> Certs:
    """Copies of the server's files that a test may rewrite while the server runs."""
    folder.mkdir()
    cert, key = folder / "server.pem", folder / "server-key.pem"
    shutil.copy(certs.server_cert, cert)
    shutil.copy(certs.server_key, key)
    return Certs(certs.ca, certs.ca_key, cert, key, certs.client_cert, certs.client_key)


def server_args(model_store, certs: Certs, *extra: str) -> list[str]:
    return [
        "--store", str(model_store.root), "--model", "adder", "--threads", "1",
        "--log-level", "warning", "--tls-cert", str(certs.server_cert),
        "--tls-key", str(certs.server_key), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def served(certs, tmp_path_factory) -> Certs:
    """The TLS server's own files, which the last test rewrites."""
    return served_files(certs, tmp_path_factory.mktemp("tls") / "served")


@pytest.fixture(scope="module")
def tls_server(model_store, certs, served) -> Iterator[ServerProcess]:
    args = server_args(
        model_store, served, "--header-timeout", str(HANDSHAKE_TIMEOUT),
        "--keep-alive-timeout", str(KEEP_ALIVE_TIMEOUT),
    )  # fmt: skip
    context = client_context(certs, with_cert=False)
    log = served.server_cert.parent.parent / "server.log"
    with serve_in_subprocess(args, log, verify=context) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(model_store, certs, tmp_path_factory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("mtls")
    args = server_args(model_store, certs, "--tls-client-ca", str(certs.ca))
    with serve_in_subprocess(args, folder / "server.log", verify=client_context(certs)) as server:
        yield server


def infer_body() -> dict:
    return {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def grpc_client(
    server: ServerProcess, certs: Certs, with_cert: bool
) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(
        url=server.grpc_target,
        ssl=True,
        root_certificates=str(certs.ca),
        private_key=str(certs.client_key) if with_cert else None,
        certificate_chain=str(certs.client_cert) if with_cert else None,
    )


def grpc_infer(client: grpcclient.InferenceServerClient) -> np.ndarray:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer("adder", [tensor], model_version="1").as_numpy("y")


def test_https_health_and_infer(tls_server):
    with tls_server.client() as client:
        assert client.get("/v2/health/ready").status_code == 200
        answer = client.post("/v2/models/adder/versions/1/infer", json=infer_body())
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]


def test_metrics_and_management_over_tls(tls_server):
    verify = tls_server.verify
    metrics = httpx.get(tls_server.metrics_url, verify=verify, timeout=10)
    assert metrics.status_code == 200 and "torchferry_workers" in metrics.text
    models = httpx.get(f"{tls_server.management_url}/models", verify=verify, timeout=10)
    assert models.status_code == 200 and "adder" in models.text
    with pytest.raises(httpx.HTTPError):  # plain HTTP is not served beside TLS
        httpx.get(f"http://127.0.0.1:{tls_server.management_port}/models", timeout=5)


def test_grpc_over_tls(tls_server, certs):
    client = grpc_client(tls_server, certs, with_cert=False)
    try:
        assert client.is_server_ready()
        np.testing.assert_allclose(grpc_infer(client), [[1.0, 3.0, 5.0, 7.0]])
    finally:
        client.close()


def test_plain_http_to_the_tls_port_fails_cleanly(tls_server):
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_server.port}/v2/health/ready", timeout=5)
    with pytest.raises(httpx.HTTPError):  # a client that trusts nothing of ours
        httpx.get(f"{tls_server.url}/v2/health/ready", timeout=5)
    with tls_server.client() as client:  # and the server still serves TLS clients
        assert client.get("/v2/health/live").status_code == 200
    assert tls_server.alive()
    assert "Traceback" not in tls_server.output()


def test_a_client_that_never_says_hello_is_cut_off(tls_server):
    """A TCP connection without a TLS handshake is closed after --header-timeout, on the
    HTTP, gRPC and management ports."""
    ports = [tls_server.port, tls_server.grpc_port, tls_server.management_port]
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for port in ports]
    started = time.monotonic()
    try:
        for sock in socks:
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
        assert time.monotonic() - started < HANDSHAKE_TIMEOUT + 3
    finally:
        for sock in socks:
            sock.close()


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(tls_server, certs):
    """The server's close_notify, then its end of the TCP connection: it does not wait for
    the client's close_notify (asyncio would, for 30 s, and the connection would count
    against --max-connections all that time)."""
    context = client_context(certs, with_cert=False)
    tcp = socket.create_connection(("127.0.0.1", tls_server.port), timeout=5)
    # a plain end of input, without the server's close_notify, would raise here
    with context.wrap_socket(
        tcp, server_hostname="localhost", suppress_ragged_eofs=False
    ) as client:
        client.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: localhost\r\n\r\n")
        answer = b""
        while not answer.endswith(b"}"):
            answer += client.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")
        idle = time.monotonic()
        assert client.recv(1) == b""  # close_notify
        # the TCP connection's end (FIN), seen through a duplicate of the socket
        with socket.socket(fileno=os.dup(client.fileno())) as raw:
            raw.settimeout(5)
            assert raw.recv(1, socket.MSG_PEEK) == b""
        assert time.monotonic() - idle < KEEP_ALIVE_TIMEOUT + 3


def test_mutual_tls_serves_clients_with_a_certificate(mtls_server, certs):
    with mtls_server.client() as client:
        answer = client.post("/v2/models/adder/infer", json=infer_body())
    assert answer.status_code == 200, answer.text
    client = grpc_client(mtls_server, certs, with_cert=True)
    try:
        np.testing.assert_allclose(grpc_infer(client), [[1.0, 3.0, 5.0, 7.0]])
    finally:
        client.close()
    metrics = httpx.get(mtls_server.metrics_url, verify=mtls_server.verify, timeout=10)
    assert metrics.status_code == 200


def test_mutual_tls_refuses_clients_without_a_certificate(mtls_server, certs):
    anonymous = client_context(certs, with_cert=False)
    for url in (f"{mtls_server.url}/v2/health/ready", f"{mtls_server.management_url}/models"):
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, verify=anonymous, timeout=5)
    client = grpc_client(mtls_server, certs, with_cert=False)
    try:
        with pytest.raises(InferenceServerException) as caught:
            grpc_infer(client)
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        client.close()
    with mtls_server.client() as client:
        assert client.get("/v2/health/live").status_code == 200


def test_idle_keep_alive_connections_do_not_hold_the_drain(mtls_server):
    """Ends the mutual-TLS server (no later test may use it). An idle keep-alive client on
    each listener (a worker's, metrics, management) must not hold the exit: the drain
    closes idle connections after a 1 s grace, and a TLS close must not wait for the
    client's close_notify (a client that is not reading never sends one)."""
    urls = [f"{mtls_server.url}/v2/health/live", mtls_server.metrics_url]
    urls.append(f"{mtls_server.management_url}/models")
    with contextlib.ExitStack() as stack:
        for url in urls:
            client = stack.enter_context(httpx.Client(verify=mtls_server.verify, timeout=10))
            assert client.get(url).status_code == 200  # its connection stays open, idle
        started = time.monotonic()
        mtls_server.process.send_signal(signal.SIGTERM)
        mtls_server.process.wait(timeout=60)
        took = time.monotonic() - started
    assert mtls_server.process.returncode == 0, mtls_server.output()
    # ~1.6 s, as over plain HTTP; 31.5 s (workers), 11 s (supervisor alone) when it waited
    assert took < 8, f"the drain took {took:.1f} s"


def test_torchferrys_own_clients_speak_tls(tls_server, certs, capsys):
    with Client(tls_server.url, verify=tls_server.verify) as client:
        assert client.ready()
    rollout = ["rollout", tls_server.management_url, "nosuchmodel", "--to", "1", "--no-wait"]
    assert main(rollout) == 1  # the system's CAs do not know the test CA
    assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().out.replace("\n", "")
    assert main([*rollout, "--cacert", str(certs.ca)]) == 1  # reached: the model is unknown
    assert "404" in capsys.readouterr().out


CERT_AND_KEY = ["--tls-cert", "{server_cert}", "--tls-key", "{server_key}"]


@pytest.mark.parametrize(
    ("options", "message", "named"),
    [
        (["--tls-cert", "{server_cert}"], "--tls-cert needs --tls-key", None),
        (["--tls-key", "{server_key}"], "--tls-key needs --tls-cert", None),
        (["--tls-client-ca", "{ca}"], "--tls-client-ca needs --tls-cert and --tls-key", None),
        (["--tls-cert", "{server_cert}", "--tls-key", "{client_key}"], "does not match", "client_key"),
        (["--tls-cert", "{missing}", "--tls-key", "{server_key}"], "cannot read the certificate", "missing"),
        (["--tls-cert", "{server_key}", "--tls-key", "{server_key}"], "no valid PEM certificate", "server_key"),
        (["--tls-cert", "{server_cert}", "--tls-key", "{ca}"], "cannot use the private key", "ca"),
        ([*CERT_AND_KEY, "--tls-client-ca", "{ca_key}"], "client CA file", "ca_key"),
    ],
)  # fmt: skip
def test_bad_tls_options_fail_at_start_naming_the_file(
    model_store, certs, tmp_path, capsys, options, message, named
):
    files = {**vars(certs), "missing": tmp_path / "nope.pem"}
    args = [option.format(**files) for option in options]
    assert main(["serve", "--store", str(model_store.root), *args]) == 1
    printed = " ".join(capsys.readouterr().err.split())
    assert message in printed
    if named is not None:
        assert Path(files[named]).name in printed


def _issuer(server: ServerProcess, context: ssl.SSLContext) -> str:
    """The common name of the CA that signed the certificate the server presents now."""
    url = f"{server.url}/v2/health/live"
    with httpx.Client(verify=context, timeout=5) as client, client.stream("GET", url) as answer:
        sslobj = answer.extensions["network_stream"].get_extra_info("ssl_object")
        issuer = dict(pair[0] for pair in sslobj.getpeercert()["issuer"])
    return issuer["commonName"]


def _wait_for_issuer(server: ServerProcess, context: ssl.SSLContext, name: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            if _issuer(server, context) == name:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"the server never presented {name}'s certificate"
        time.sleep(0.2)


def _handshake(
    server_context: ssl.SSLContext, client: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> ssl.SSLObject:
    """One TLS handshake in memory, through ``server_context`` as a listener uses it (its SNI
    callback switches to the current material); the client's side, once a byte of data
    crossed (TLS 1.3 sends its tickets after the handshake). A refusal raises ``SSLError``."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_out, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_context.wrap_bio(to_server, server_out, server_side=True)
    ours = client.wrap_bio(to_client, client_out, server_hostname="localhost", session=session)
    done: set[str] = set()
    for _ in range(10):
        for name, side, out, peer in (("client", ours, client_out, to_server),
                                      ("server", server, server_out, to_client)):  # fmt: skip
            try:
                side.do_handshake()
                done.add(name)
            except ssl.SSLWantReadError:
                pass
            finally:
                peer.write(out.read())
        if len(done) == 2:
            break
    server.write(b"x")
    to_client.write(server_out.read())
    assert ours.read(1) == b"x"
    return ours


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLS1.2", "TLS1.3"]
)
def test_a_removed_client_ca_is_not_trusted_through_session_resumption(
    certs, tmp_path, monkeypatch, version
):
    """Resuming a session skips the client's certificate: a session made while the old CA was
    trusted must not outlive its removal from --tls-client-ca (no resumption at all)."""
    monkeypatch.setattr(tls, "CHECK_EVERY_S", 0.0)  # every handshake looks at the files
    client_ca = tmp_path / "clients-ca.pem"
    shutil.copy(certs.ca, client_ca)
    reloading = tls.ReloadingTLS(tls.TLSFiles(certs.server_cert, certs.server_key, client_ca))
    listener = reloading.server_context()
    client = client_context(certs)
    client.maximum_version = version
    first = _handshake(listener, client)
    assert first.version() == version.name.replace("v1_", "v1.")
    assert first.session is not None
    # the clients' CA is replaced by another one (by rename, as rotation tools do)
    other = make_certs(tmp_path / "other", ca_name="another clients CA")
    staged = tmp_path / "clients-ca.tmp"
    shutil.copy(other.ca, staged)
    os.replace(staged, client_ca)
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        _handshake(listener, client)
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        _handshake(listener, client, session=first.session)


def test_changed_certificate_files_are_served_without_a_restart(tls_server, served, tmp_path):
    """Runs last in this module: it leaves the server with another CA's certificate."""
    new = make_certs(tmp_path / "new", ca_name="rotated CA")
    trusts_new = ssl.create_default_context(cafile=str(new.ca))
    pid = tls_server.worker_pids()
    # half written: the new certificate beside the old key is refused, the old pair served
    shutil.copy(new.server_cert, served.server_cert)
    time.sleep(1.3)
    with tls_server.client() as client:
        assert client.get("/v2/health/live").status_code == 200
    # the key arrives (replaced by rename, as tools that rotate certificates do)
    staged = served.server_key.with_suffix(".tmp")
    shutil.copy(new.server_key, staged)
    os.replace(staged, served.server_key)
    _wait_for_issuer(tls_server, trusts_new, "rotated CA")
    grpc = grpcclient.InferenceServerClient(
        url=tls_server.grpc_target, ssl=True, root_certificates=str(new.ca)
    )
    try:
        assert grpc.is_server_live()
    finally:
        grpc.close()
    metrics = httpx.get(tls_server.metrics_url, verify=trusts_new, timeout=10)
    assert metrics.status_code == 200
    assert tls_server.worker_pids() == pid  # no worker was restarted
    output = tls_server.output()
    assert "cannot be used yet" in output and "Traceback" not in output
