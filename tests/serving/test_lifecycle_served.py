"""Changing models while a real server (2 workers) serves real clients of every protocol:
loads, default switches, traffic splits and unloads drop nothing, every answer comes from a
version loaded at that moment, a corrupt archive is refused with its reason while the old
version serves on, and a restart comes back with the same models, defaults and splits."""

from __future__ import annotations

import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from lifecycle_load import Traffic

from torchferry.serving.process import ServerProcess


@dataclass
class Timeline:
    """When each version may have been loaded: from the call that loads it to the return of
    the call that unloads it."""

    loaded_from: dict[int, float] = field(default_factory=dict)
    unloaded_at: dict[int, float] = field(default_factory=dict)

    def allows(self, version: int, sent: float, received: float) -> bool:
        start = self.loaded_from.get(version)
        end = self.unloaded_at.get(version, float("inf"))
        return start is not None and start <= received and sent <= end


def manage(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.management_url, timeout=60)


def check(answer: httpx.Response, status: int = 200) -> dict:
    assert answer.status_code == status, f"{answer.request.method} {answer.request.url}: " + (
        answer.text
    )
    return answer.json()


@pytest.fixture
def sources(model_store, tmp_path) -> Path:
    """Archives outside the served store, where management loads may come from: two archive
    folders of the adder (scale 2 and 3) and its bare ONNX graph."""
    root = tmp_path / "sources"
    root.mkdir()
    shutil.copytree(model_store.root / "adder" / "1", root / "adder-times-2")
    shutil.copytree(model_store.root / "adder" / "2", root / "adder-times-3")
    shutil.copyfile(model_store.root / "adder" / "2" / "model.onnx", root / "adder.onnx")
    return root


@pytest.fixture
def store(model_store, tmp_path) -> Path:
    """A store of its own (the tests change it) with adder version 1."""
    root = tmp_path / "store"
    shutil.copytree(model_store.root / "adder" / "1", root / "adder" / "1")
    return root


def serve_args(store: Path, sources: Path) -> list[str]:
    return ["--store", str(store), "--model-source-root", str(sources), "--workers", "2"]


def test_changes_under_load_on_every_protocol_drop_nothing(store, sources, start_server, tmp_path):
    timeline = Timeline(loaded_from={1: 0.0})
    steps: list[tuple[str, float]] = []
    with start_server(serve_args(store, sources), tmp_path / "server.log") as server:
        mgmt = manage(server)

        def load(url: str, version: int) -> None:
            timeline.loaded_from[version] = time.monotonic()
            body = check(mgmt.post("/models", params={"url": url, "model_name": "adder"}))
            assert body["modelVersion"] == str(version), body

        def unload(version: int) -> None:
            check(mgmt.delete(f"/models/adder/{version}"))
            timeline.unloaded_at[version] = time.monotonic()

        def default(version: int) -> None:
            check(mgmt.put(f"/models/adder/{version}/set-default"))

        def split(weights: dict[str, int]) -> None:
            check(mgmt.put("/models/adder/traffic", json=weights))

        plan = [
            ("load v2 from an archive folder", lambda: load("adder-times-3", 2)),
            ("default v2", lambda: default(2)),
            ("load v3 from a bare .onnx", lambda: load(str(sources / "adder.onnx"), 3)),
            ("default v3", lambda: default(3)),
            ("split 2:50 3:50", lambda: split({"2": 50, "3": 50})),
            ("clear the split", lambda: check(mgmt.delete("/models/adder/traffic"))),
            ("unload v2", lambda: unload(2)),
            ("unload v1", lambda: unload(1)),
            ("load v4", lambda: load("adder-times-2", 4)),
            ("split 3:50 4:50", lambda: split({"3": 50, "4": 50})),
            ("default v4", lambda: default(4)),
            ("unload v3", lambda: unload(3)),
        ]  # fmt: skip
        with Traffic(server, "adder").running() as traffic:
            started = time.monotonic()
            for what, action in plan:
                time.sleep(5)
                action()
                steps.append((what, time.monotonic() - started))
            time.sleep(2)
        assert time.monotonic() - started >= 60
        index = check(mgmt.post("/v2/repository/index"))
        assert [(e["version"], e["state"]) for e in index if e["state"] == "READY"] == [
            ("4", "READY")
        ]
    answers = traffic.answers
    print(f"{len(answers)} answers over {steps[-1][1]:.0f} s; steps at {steps}")
    for protocol in traffic.protocols:
        assert traffic.count(protocol) > 50, f"{protocol}: {traffic.count(protocol)} answers"
    assert traffic.failures() == []
    misplaced = [a for a in answers if not timeline.allows(a.version, a.sent, a.received)]
    assert misplaced == []
    served = {a.version for a in answers}
    assert served == {1, 2, 3, 4}, served


def test_a_corrupt_archive_is_refused_with_its_reason_and_the_old_version_serves_on(
    store, sources, start_server, tmp_path
):
    broken = sources / "broken"
    shutil.copytree(sources / "adder-times-3", broken)
    with (broken / "model.onnx").open("r+b") as graph:  # one flipped byte: hashes differ
        graph.seek(40)
        byte = graph.read(1)
        graph.seek(40)
        graph.write(bytes([byte[0] ^ 0xFF]))
    with start_server(serve_args(store, sources), tmp_path / "server.log") as server:
        mgmt = manage(server)
        with Traffic(server, "adder", protocols=("v2", "v2-grpc")).running() as traffic:
            time.sleep(1)
            asked = time.monotonic()
            refused = mgmt.post("/models", params={"url": "broken", "model_name": "adder"})
            took = time.monotonic() - asked
            # the same archive put straight into the store: refused by every worker's load
            shutil.copytree(broken, store / "adder" / "2")
            asked = time.monotonic()
            failed = mgmt.post("/v2/repository/models/adder/load")
            took_in_store = time.monotonic() - asked
            time.sleep(1)
        assert refused.status_code == 400, refused.text
        error = refused.json()
        assert error["code"] == 400 and error["type"] == "BadRequestException"
        assert "model.onnx" in error["message"] and "SHA-256" in error["message"], error
        assert failed.status_code == 400, failed.text
        reason = failed.json()["error"]
        assert "version 2" in reason and "model.onnx" in reason and "SHA-256" in reason, reason
        assert took < 10 and took_in_store < 10, (took, took_in_store)
        assert traffic.failures() == []
        assert {a.version for a in traffic.answers} == {1}
        # the refused version is not loaded anywhere; the store keeps nothing of it
        described = {m["modelVersion"]: m for m in check(mgmt.get("/models/adder/all"))}
        assert described["1"]["state"] == "ready"
        assert described.get("2", {"state": "failed"})["state"] == "failed"
        repository = check(mgmt.post("/v2/repository/index"))
        states = {e["version"]: (e["state"], e.get("reason") or "") for e in repository}
        assert states["1"] == ("READY", "") and states["2"][0] == "UNAVAILABLE", states
        assert "SHA-256" in states["2"][1], states


def test_a_restart_comes_back_with_the_same_models_defaults_and_splits(
    store, sources, start_server, tmp_path
):
    args = serve_args(store, sources)
    with start_server(args, tmp_path / "first.log") as server:
        mgmt = manage(server)
        check(mgmt.post("/models", params={"url": "adder-times-3", "model_name": "adder"}))
        check(mgmt.post("/models", params={"url": "adder-times-2", "model_name": "adder"}))
        check(mgmt.put("/models/adder/3/set-default"))
        check(mgmt.delete("/models/adder/1"))
        check(mgmt.put("/models/adder/traffic", json={"2": 80, "3": 20}))
        before = {
            "models": check(mgmt.get("/models/adder/all")),
            "traffic": check(mgmt.get("/models/adder/traffic")),
        }
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
    with start_server(args, tmp_path / "second.log") as server:
        mgmt = manage(server)
        after = {
            "models": check(mgmt.get("/models/adder/all")),
            "traffic": check(mgmt.get("/models/adder/traffic")),
        }
        assert [m["modelVersion"] for m in after["models"]] == ["2", "3"]
        for was, now in zip(before["models"], after["models"], strict=True):
            assert {k: (v, now.get(k)) for k, v in was.items() if now.get(k) != v} == {}
        assert after == before
        with httpx.Client(base_url=server.url, timeout=30) as client:
            row = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
            versions = {
                client.post("/v2/models/adder/infer", json={"inputs": [row]}).headers[
                    "x-model-version"
                ]
                for _ in range(60)
            }
        assert versions == {"2", "3"}
