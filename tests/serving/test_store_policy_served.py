"""Version policies and store polling on a real server, and Triton's repository extension
through tritonclient: a version copied into the store is served once complete (never while
partly copied), ``latest:1`` retires the older one, and tritonclient's load, unload and
index calls work against the management port."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROW = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}


def served_versions(url: str) -> set[str]:
    with httpx.Client(base_url=url, timeout=10) as client:
        return {
            client.post("/v2/models/adder/infer", json={"inputs": [ROW]}).headers["x-model-version"]
            for _ in range(20)
        }


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


def index(management_url: str) -> dict[str, str]:
    entries = httpx.post(f"{management_url}/v2/repository/index", timeout=10).json()
    return {entry["version"]: entry["state"] for entry in entries}


def test_polling_serves_complete_versions_only_under_the_policy(
    model_store, start_server, tmp_path
):
    store = tmp_path / "store"
    shutil.copytree(model_store.root / "adder" / "1", store / "adder" / "1")
    args = ["--store", str(store), "--poll-store", "0.3", "--version-policy", "adder=latest:1"]
    args += ["--workers", "2"]
    with start_server(args, tmp_path / "server.log") as server:
        assert served_versions(server.url) == {"1"}
        # a copy in progress: the manifest is there, the graph only half written
        partial = store / "adder" / "2"
        partial.mkdir()
        source = model_store.root / "adder" / "2"
        shutil.copyfile(source / "manifest.json", partial / "manifest.json")
        graph = (source / "model.onnx").read_bytes()
        (partial / "model.onnx").write_bytes(graph[: len(graph) // 2])
        time.sleep(2)  # several polls
        assert served_versions(server.url) == {"1"}
        assert server.alive()
        (partial / "model.onnx").write_bytes(graph)  # the copy completes
        wait_for(lambda: served_versions(server.url) == {"2"}, 15, "version 2 replaces 1")
        assert index(server.management_url) == {"1": "UNAVAILABLE", "2": "READY"}
        # the partial copy failed several polls; the log says so once
        assert server.output().count("did not load (retried at every poll)") == 1


def test_tritonclient_repository_calls_against_the_management_port(
    model_store, start_server, tmp_path
):
    store = tmp_path / "store"
    for version in ("1", "2"):
        shutil.copytree(model_store.root / "adder" / version, store / "adder" / version)
    shutil.copytree(model_store.root / "mlp" / "1", store / "mlp" / "1")
    args = ["--store", str(store), "--model", "adder"]
    with start_server(args, tmp_path / "server.log") as server:
        repository = httpclient.InferenceServerClient(server.management_url.removeprefix("http://"))
        entries = {
            (e["name"], e["version"], e["state"]) for e in repository.get_model_repository_index()
        }
        assert ("adder", "1", "READY") in entries and ("adder", "2", "READY") in entries
        assert any(name == "mlp" and state == "UNAVAILABLE" for name, _, state in entries)
        repository.load_model("mlp")
        inference = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        assert inference.is_model_ready("mlp")
        repository.unload_model("adder")
        assert not inference.is_model_ready("adder")
        with pytest.raises(InferenceServerException, match="config"):
            repository.load_model("adder", config='{"max_batch_size": 8}')
        repository.load_model("adder")
        assert inference.is_model_ready("adder", "2")
