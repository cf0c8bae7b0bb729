"""Remote model sources against a real server and a real HTTPS file server on loopback:
a ``.mar`` registered by ``https://`` URL (through a redirect, TLS verified for the name,
the connection to the checked address) serves; everything the policy refuses is refused
with the status that says why, and no download is left behind in the store. Model names
and versions from requests never become paths."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import ssl
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from certs import make_certs
from onnx import TensorProto, helper, numpy_helper

from torchferry.errors import RemoteSourceFailed
from torchferry.serving.management.remote import _local_name, fetch_remote
from torchferry.serving.settings import ServerSettings

LIMIT = 1 << 20  # --max-download-size
DEADLINE_S = 2.0  # --download-timeout


def adder() -> bytes:
    """y = x + 1 for x of shape [N, 2], as an ONNX graph."""
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "adder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    return model.SerializeToString()


def mar_bytes(extra: dict[str, bytes] | None = None, name: str = "adder") -> bytes:
    """A .mar as torch-model-archiver packs an ONNX model, with ``extra`` members."""
    manifest = {
        "runtime": "python",
        "model": {"modelName": name, "serializedFile": "model.onnx", "handler": "base_handler"},
    }
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.onnx", adder())
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return packed.getvalue()


class Files(BaseHTTPRequestHandler):
    """GET routes of the remote: ``files`` by path, plus redirects, a slow and a huge body."""

    files: dict[str, bytes] = {}
    redirects: dict[str, str] = {}
    #: The Host header and the TLS server name (SNI) of each request, in order.
    hosts: list[str] = []
    server_names: list[str | None] = []

    def do_GET(self) -> None:
        self.hosts.append(self.headers.get("Host", ""))
        self.path = self.path.partition("?")[0]
        if self.path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/models/slow.mar":
            self.send_response(200)
            self.end_headers()
            time.sleep(DEADLINE_S + 2)
        elif self.path == "/models/declared-huge.mar":
            self.send_response(200)
            self.send_header("Content-Length", str(50 * LIMIT))
            self.end_headers()
        elif self.path == "/models/endless.mar":  # no Content-Length: the body ends at close
            self.send_response(200)
            self.end_headers()
            for _ in range(4 * LIMIT // 65536):
                self.wfile.write(b"\0" * 65536)
        elif self.path in self.files:
            body = self.files[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def handle(self) -> None:
        # the server under test hangs up on purpose (too large, too late)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            super().handle()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """An HTTPS file server on 127.0.0.1 (certificate for localhost and 127.0.0.1); its port
    and the CA that signed it."""
    certs = make_certs(tmp_path_factory.mktemp("certs"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    context.sni_callback = lambda _socket, name, _context: Files.server_names.append(name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    Files.files = {
        "/models/tiny.mar": mar_bytes(),
        "/models/zipslip.mar": mar_bytes({"../../escaped.txt": b"outside"}),
        "/models/named-out.mar": mar_bytes(name="../../escaped"),
    }
    Files.redirects = {
        "/r/tiny.mar": "/models/tiny.mar",
        "/r/elsewhere.mar": "https://evil.example.net/tiny.mar",
        "/r/loopback2.mar": f"https://127.0.0.2:{port}/models/tiny.mar",
        "/r/plain-http.mar": f"http://127.0.0.1:{port}/models/tiny.mar",
        **{f"/loop/{i}.mar": f"/loop/{i + 1}.mar" for i in range(10)},
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port, certs.ca
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def served(start_server, remote, tmp_path_factory):
    port, ca = remote
    tmp = tmp_path_factory.mktemp("served")
    store = tmp / "store"
    store.mkdir()
    args = [
        "--store", str(store), "--no-grpc", "--no-metrics",
        "--allowed-urls", rf"https://(localhost|127\.0\.0\.[12]):{port}/(models|r|loop)/.*",
        "--allow-url-network", "127.0.0.1/32",
        "--allow-url-network", "::1/128",
        "--url-ca-bundle", str(ca),
        "--max-download-size", str(LIMIT),
        "--download-timeout", str(DEADLINE_S),
    ]  # fmt: skip
    with start_server(args, tmp / "server.log") as server:
        yield server, store, port


Register = Callable[..., httpx.Response]


@pytest.fixture(scope="module")
def register(served) -> Iterator[Register]:
    server = served[0]
    with httpx.Client(base_url=server.management_url, timeout=60) as client:

        def call(url: str, **params: str) -> httpx.Response:
            return client.post("/models", params={"url": url, **params})

        yield call


def _downloads_left(store: Path) -> list[Path]:
    return list(store.glob(".download-*"))


def test_a_mar_by_https_url_registers_and_serves(served, register) -> None:
    server, store, port = served
    answer = register(f"https://localhost:{port}/r/tiny.mar?token=secret")
    assert answer.status_code == 200, answer.text
    assert answer.json()["modelName"] == "adder" and answer.json()["modelVersion"] == "1"
    # connected to the checked address, but as the name: in TLS and in HTTP
    assert Files.server_names[-2:] == ["localhost", "localhost"]
    assert Files.hosts[-2:] == [f"localhost:{port}", f"localhost:{port}"]
    described = httpx.get(f"{server.management_url}/models/adder/1").json()[0]
    assert described["source"] == f"https://localhost:{port}/r/tiny.mar?..."  # no token
    request = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    predicted = httpx.post(f"{server.url}/v2/models/adder/infer", json=request)
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["outputs"][0]["data"] == [2.0, 3.0]
    assert _downloads_left(store) == []


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("http://127.0.0.1:{port}/models/tiny.mar", 403, "must use https"),
        ("https://localhost:{port}/other/tiny.mar", 403, "matches no --allowed-urls pattern"),
        ("https://localhost:{port}@evil.example.net/models/tiny.mar", 403, "user info"),
        ("https://localhost:{port}/models/../secret/tiny.mar", 403, "'..' segments"),
        ("https://localhost:{port}/models/tiny.zip", 400, ".mar or an .onnx"),
        ("https://127.0.0.2:{port}/models/tiny.mar", 403, "127.0.0.2 is a loopback address"),
        ("https://localhost:{port}/r/elsewhere.mar", 403, "redirects to a URL that is refused"),
        ("https://localhost:{port}/r/loopback2.mar", 403, "127.0.0.2 is a loopback address"),
        ("https://localhost:{port}/r/plain-http.mar", 403, "must use https"),
        ("https://localhost:{port}/loop/0.mar", 403, "redirects more than 5 times"),
        ("https://localhost:{port}/models/missing.mar", 502, "answered 404"),
        # an IP literal: TLS verified for the address
        ("https://127.0.0.1:{port}/models/missing.mar", 502, "answered 404"),
        ("https://localhost:{port}/models/declared-huge.mar", 413, "--max-download-size"),
        ("https://localhost:{port}/models/endless.mar", 413, "--max-download-size"),
        ("https://localhost:{port}/models/slow.mar", 504, "--download-timeout"),
        ("https://localhost:{port}/models/zipslip.mar", 400, "outside the archive"),
        ("https://localhost:{port}/models/named-out.mar", 400, "model name '../../escaped'"),
    ],
)
def test_refused_sources(served, register, path: str, status: int, says: str) -> None:
    _, store, port = served
    answer = register(path.format(port=port))
    assert answer.status_code == status, answer.text
    assert says in answer.json()["message"], answer.json()
    assert _downloads_left(store) == []
    assert not list(store.parent.glob("escaped*"))


BAD_NAMES = ["../x", "a/b", "a\\b", ".hidden", "..", "-rf", "x\x00y", "a" * 129, "%2e%2e", "é"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_model_name_that_could_be_a_path_is_refused(served, register, name: str) -> None:
    _, store, port = served
    answer = register(f"https://localhost:{port}/models/tiny.mar", model_name=name)
    assert answer.status_code == 400 and "model name" in answer.json()["message"], answer.text
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == ["adder"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/repository/models/..%2F..%2Fetc/load"),
        ("POST", "/v2/repository/models/%2e%2e/load"),
        ("POST", "/v2/repository/models/.hidden/unload"),
        ("GET", "/models/..%2Fadder"),
        ("DELETE", "/models/%2e%2e"),
        ("PUT", "/models/..%2Fetc/version-policy"),
        ("PUT", "/models/adder/-1/set-default"),
        ("PUT", "/models/adder/0/set-default"),
        ("DELETE", "/models/adder/1e3"),
        ("GET", "/models/adder/..%2F1"),
    ],
)
def test_names_and_versions_in_paths_never_reach_the_store(served, method, path) -> None:
    server, store, _ = served
    answer = httpx.request(method, f"{server.management_url}{path}", json={})
    assert answer.status_code in (400, 404), answer.text
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == ["adder"]
    assert [p.name for p in (store / "adder").iterdir()] == ["1"]


def test_a_certificate_from_an_unknown_ca_is_refused(remote, tmp_path) -> None:
    port, _ = remote
    settings = ServerSettings(
        store=tmp_path,
        allowed_urls=[r"https://localhost:\d+/.*"],
        allowed_url_networks=["127.0.0.1/32", "::1/128"],
    )  # the system's CAs only

    async def fetch() -> None:
        async with fetch_remote(f"https://localhost:{port}/models/tiny.mar", settings):
            pass

    with pytest.raises(RemoteSourceFailed, match="certificate does not verify"):
        asyncio.run(fetch())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("file_name", "local"),
    [
        ("digits.onnx", "digits.onnx"),
        ("resnet-50_v1.2.MAR", "resnet-50_v1.2.mar"),
        ("-rf.onnx", "download.onnx"),  # a model name may not start with '-' either
        (".hidden.mar", "download.mar"),
        ("a b.onnx", "download.onnx"),
        (f"{'x' * 129}.onnx", "download.onnx"),
    ],
)
def test_a_download_keeps_its_file_name_only_when_it_could_name_a_model(
    file_name: str, local: str
) -> None:
    assert _local_name(file_name) == local
