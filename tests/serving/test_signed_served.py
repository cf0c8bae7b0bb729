"""``serve --require-signed --trusted-key`` on a real server: a signed model serves (its
description says the signature verified); a management load of an unsigned archive, of a
signed one altered since, and of one signed by an unknown key is refused with a 400 that
says why, while the version before serves on; a signed archive loads, its signature kept
through staging; a version that store polling finds unsigned is not loaded, the reason in
the log and in the version's failed state. A server whose store holds an unsigned archive
refuses to start, as it does for an archive that fails its SHA-256 check."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from certs import make_signing_keys
from versions_store import PERTURBED, WEIGHTS, write_lin

from torchferry.archive import ModelStore
from torchferry.archive.integrity import hash_file
from torchferry.archive.manifest import Manifest
from torchferry.archive.signing import sign_archive
from torchferry.serving.process import ServerProcess

T = TypeVar("T")
ROW = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}


def signed_lin(store: ModelStore, version: int, key: Path, name: str = "lin") -> Path:
    path = write_lin(store, version, WEIGHTS, name=name)
    sign_archive(path, key)
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A store with ``lin`` 1 and ``polled`` 1, both signed by the trusted key, and sources
    outside it: ``signed`` (trusted), ``unsigned``, ``tampered`` (its graph swapped and its
    manifest's hashes updated to match: only the signature catches it), ``stranger`` (signed
    by a key the server does not trust)."""
    root = tmp_path_factory.mktemp("signed")
    private, public = make_signing_keys(root / "keys")
    stranger_key, _ = make_signing_keys(root / "keys", "stranger")
    store = ModelStore(root / "store")
    signed_lin(store, 1, private)
    signed_lin(store, 1, private, name="polled")
    made = ModelStore(root / "made")
    sources = root / "sources"
    sources.mkdir()
    shutil.move(signed_lin(made, 2, private), sources / "signed")
    shutil.move(write_lin(made, 3, WEIGHTS), sources / "unsigned")
    tampered = shutil.move(signed_lin(made, 4, private), sources / "tampered")
    write_lin(made, 5, PERTURBED)
    shutil.copyfile(made.path("lin", 5) / "model.onnx", tampered / "model.onnx")
    manifest = Manifest.read(tampered)
    files = {**manifest.files, "model.onnx": hash_file(tampered / "model.onnx")}
    (tampered / "manifest.json").write_text(manifest.model_copy(update={"files": files}).to_json())
    shutil.move(signed_lin(made, 6, stranger_key), sources / "stranger")
    return {"store": store.root, "sources": sources, "public": public, "private": private}


@pytest.fixture(scope="module")
def server(tree, start_server, tmp_path_factory) -> Iterator[ServerProcess]:
    args = ["--store", str(tree["store"]), "--model-source-root", str(tree["sources"])]
    args += ["--require-signed", "--trusted-key", str(tree["public"]), "--poll-store", "0.3"]
    args += ["--no-grpc", "--no-metrics", "--threads", "1"]
    with start_server(args, tmp_path_factory.mktemp("logs") / "server.log") as running:
        yield running


def infer(server: ServerProcess, model: str, version: str | None = None) -> httpx.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return httpx.post(f"{server.url}{path}", json={"inputs": [ROW]}, timeout=10)


def describe(server: ServerProcess, model: str) -> dict[str, dict]:
    answer = httpx.get(f"{server.management_url}/models/{model}/all", timeout=10)
    assert answer.status_code == 200, answer.text
    return {entry["modelVersion"]: entry for entry in answer.json()}


def load(server: ServerProcess, source: str) -> httpx.Response:
    params = {"url": source, "model_name": "lin"}
    return httpx.post(f"{server.management_url}/models", params=params, timeout=60)


def test_a_signed_model_serves_and_says_its_signature_verified(server):
    answer = infer(server, "lin")
    assert answer.status_code == 200, answer.text
    assert describe(server, "lin")["1"]["signature"] == "verified"
    log = server.output()
    assert "loaded lin version 1 (" in log and "signature verified) in " in log, log
    assert "Logging error" not in log


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("unsigned", "is not signed: no signature file model.sig"),
        ("tampered", "changed since signing: manifest.json, model.onnx"),
        ("stranger", "is signed by a key not in --trusted-key"),
    ],
)
def test_a_management_load_is_refused_with_its_reason_and_the_old_version_serves_on(
    server, source, reason
):
    refused = load(server, source)
    assert refused.status_code == 400, refused.text
    error = refused.json()
    assert error["type"] == "BadRequestException", error
    assert "signature refused" in error["message"] and reason in error["message"], error
    served = infer(server, "lin")
    assert served.status_code == 200 and served.headers["x-model-version"] == "1"
    assert server.alive()


def test_the_console_shows_the_refused_versions_and_no_metrics(server):
    """After the refusals above: the console's Models page tells a refused signature from
    a verified one, and its figures say why there are none (--no-metrics)."""
    answer = httpx.get(f"{server.management_url}/console/api/overview", timeout=10)
    [lin] = [model for model in answer.json()["models"] if model["name"] == "lin"]
    statuses = {v["version"]: (v["state"], v["signature_status"]) for v in lin["versions"]}
    assert statuses[1] == ("ready", "signed"), statuses
    refused = [v for v in lin["versions"] if v["signature_status"] == "refused"]
    assert refused and all("signature refused" in v["signature_detail"] for v in refused)
    assert all(v["state"] == "failed" for v in refused), refused
    figures = httpx.get(
        f"{server.management_url}/console/api/metrics", params={"model": "lin"}, timeout=10
    ).json()
    assert (figures["available"], figures["versions"]) == (False, {})
    assert "--no-metrics" in figures["reason"]


def test_a_signed_archive_loads_with_its_signature_kept_through_staging(server, tree):
    loaded = load(server, "signed")
    assert loaded.status_code == 200, loaded.text
    versions = describe(server, "lin")
    new = max(versions, key=int)
    assert versions[new]["state"] == "ready" and versions[new]["signature"] == "verified"
    assert (tree["store"] / "lin" / new / "model.sig").is_file()
    answer = infer(server, "lin", new)  # loaded beside 1, which stays the default
    assert answer.status_code == 200 and answer.headers["x-model-version"] == new


def eventually(fetch: Callable[[], T], accept: Callable[[T], bool], timeout: float = 20) -> T:
    """The first value of ``fetch()`` that ``accept`` takes (the poller retries a failed
    version at every poll, so its state goes from failed to loading and back)."""
    deadline = time.monotonic() + timeout
    while not accept(value := fetch()):
        assert time.monotonic() < deadline, value
        time.sleep(0.1)
    return value


def test_polling_refuses_an_unsigned_version_and_says_why(server, tree):
    shutil.copytree(tree["sources"] / "unsigned", tree["store"] / "polled" / "2")
    failed = eventually(
        lambda: describe(server, "polled").get("2", {}), lambda v: v.get("state") == "failed"
    )
    assert "is not signed: no signature file model.sig" in failed["reason"], failed

    def index_entry() -> dict:
        index = httpx.post(f"{server.management_url}/v2/repository/index", timeout=10).json()
        return next((e for e in index if (e["name"], e["version"]) == ("polled", "2")), {})

    # in the store from the start, the version is UNAVAILABLE ("unloaded") until it fails
    entry = eventually(index_entry, lambda e: "is not signed" in (e.get("reason") or ""))
    assert entry["state"] == "UNAVAILABLE", entry
    answer = infer(server, "polled")
    assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"
    assert "polled version 2 in the store did not load" in server.output()


def test_a_store_with_an_unsigned_archive_refuses_to_start(tree, start_server, tmp_path):
    """As for an archive that fails its SHA-256 check: the server does not start, and says
    which archive and why."""
    store = ModelStore(tmp_path / "store")
    write_lin(store, 1, WEIGHTS)
    args = ["--store", str(store.root), "--require-signed", "--trusted-key", str(tree["public"])]
    args += ["--no-grpc", "--no-metrics", "--no-management", "--threads", "1"]
    with pytest.raises(RuntimeError) as failed, start_server(args, tmp_path / "server.log"):
        pass
    message = " ".join(str(failed.value).split())
    assert "server exited with 1" in message, message
    assert "model 'lin' version 1: signature refused" in message, message
    assert "is not signed" in message, message
