"""Changing versions while serving, on a real server (uvicorn and gRPC in this process, real
ONNX Runtime models, real HTTP and gRPC clients): versions prepared, activated and retired
under load with no request failing; a retired version answering its in-flight requests;
loads that fail with their reason; shadow agreement; live stats; the version each answer
names; and the traffic key from every carrier."""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import grpc
import httpx
import numpy as np
import orjson
import pytest
from prometheus_client import REGISTRY
from versions_store import build_versions_store, candidate, corrupt_copy

from torchferry.archive import Manifest, ModelStore
from torchferry.errors import Conflict, ModelLoadFailed
from torchferry.serving.app import build_app
from torchferry.serving.lifecycle.state import Routes, Shadow
from torchferry.serving.loading import load_repository
from torchferry.serving.process import free_ports, serve_in_thread
from torchferry.serving.protos import inference_pb2 as pb
from torchferry.serving.protos.inference_pb2_grpc import GRPCInferenceServiceStub
from torchferry.serving.repository import ModelRepository
from torchferry.serving.settings import ModelOverride, ServerSettings
from torchferry.serving.shadow import Shadows

_T = TypeVar("_T")
ROW = [1.0, 2.0, 3.0, 4.0]
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_versions_store(tmp_path_factory.mktemp("versions") / "store").root


@dataclass
class Server:
    url: str
    grpc_target: str
    repository: ModelRepository
    loop: asyncio.AbstractEventLoop

    def run(self, coroutine: Awaitable[_T], timeout: float = 60) -> _T:
        """Run on the server's event loop (where the repository lives) and wait."""

        async def wrapped() -> _T:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    def call(self, function: Callable[[], _T]) -> _T:
        """A synchronous repository call, on the server's event loop."""

        async def call() -> _T:
            return function()

        return self.run(call())

    def load(self, version: int, path: Path) -> None:
        self.run(self.repository.prepare("lin", version, path))
        self.call(lambda: self.repository.activate("lin", version))

    def routes(self, routes: Routes) -> None:
        self.call(lambda: self.repository.set_routes("lin", routes))


@contextmanager
def _serve(store_root: Path, **overrides: Any) -> Iterator[Server]:
    http_port, grpc_port = free_ports(2)
    fields: dict[str, Any] = {"metrics_port": None, "access_log": False, "threads": 1}
    settings = ServerSettings(
        store=store_root, port=http_port, grpc_port=grpc_port, **{**fields, **overrides}
    )
    repository = load_repository(settings)
    app = build_app(settings, repository)
    with serve_in_thread(app, http_port) as loop:
        yield Server(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", repository, loop)


@pytest.fixture
def server(store_root: Path) -> Iterator[Server]:
    with _serve(store_root) as server:
        yield server


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def _version_of(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return int(response.headers["x-model-version"])


# -- versions change under load ------------------------------------------------------------------


def test_versions_change_under_load_and_no_request_fails(server: Server, store_root: Path):
    answers: list[tuple[int, int | None, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as web:
            while not stop.is_set():
                response = web.post("/v2/models/lin/infer", json=BODY)
                body_version = response.json().get("model_version") if response.is_success else None
                answers.append(
                    (response.status_code, response.headers.get("x-model-version"), body_version)
                )

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        loaded = {1}
        current = 1
        for version in range(2, 7):  # each: load, switch, retire the old one
            server.load(version, candidate(store_root, 2))
            loaded.add(version)
            time.sleep(0.1)
            server.run(server.repository.retire("lin", current))
            current = version
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    statuses = {status for status, _, _ in answers}
    assert statuses == {200}, [a for a in answers if a[0] != 200][:5]
    assert len(answers) > 50
    served = {int(header) for _, header, _ in answers if header is not None}
    assert served <= loaded and len(served) >= 3
    assert all(header == body for _, header, body in answers)
    assert server.repository.versions("lin") == [6]


def test_a_retired_version_answers_its_in_flight_requests(store_root: Path):
    slow = {"lin": ModelOverride(max_delay_ms=600, max_batch_size=64)}
    with _serve(store_root, per_model=slow) as server:
        server.load(2, candidate(store_root, 2))
        v1 = server.repository.get("lin", 1)
        outcome: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: outcome.append(
                httpx.post(f"{server.url}/v2/models/lin/versions/1/infer", json=BODY, timeout=30)
            )
        )
        sender.start()
        deadline = time.monotonic() + 10
        while v1.inflight == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert v1.inflight == 1
        retiring = asyncio.run_coroutine_threadsafe(server.repository.retire("lin", 1), server.loop)
        time.sleep(0.1)
        # out of routing at once, but not released while its request waits in the batcher
        assert not retiring.done()
        assert server.repository.versions("lin") == [2]
        sender.join(30)
        retiring.result(10)
        (answer,) = outcome
        assert _version_of(answer) == 1 and answer.json()["model_version"] == "1"
        with httpx.Client(base_url=server.url) as web:
            assert web.post("/v2/models/lin/versions/1/infer", json=BODY).status_code == 404
            assert _version_of(web.post("/v2/models/lin/infer", json=BODY)) == 2


def _stuck(server: Server, model: Any, count: int) -> None:
    """Pretend ``count`` requests of ``model`` are in flight (0: they have all answered)."""

    def set_inflight() -> None:
        model.inflight = count
        if count == 0:
            model.left()

    server.call(set_inflight)


def test_a_retirement_waits_no_longer_than_the_drain_timeout(
    store_root: Path, caplog: pytest.LogCaptureFixture
):
    with _serve(store_root, drain_timeout_s=0.3) as server:
        server.load(2, candidate(store_root, 2))
        v1 = server.repository.get("lin", 1)
        _stuck(server, v1, 1)  # a request that never answers
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="torchferry.repository"):
            server.run(server.repository.retire("lin", 1), timeout=10)
        assert 0.25 < time.monotonic() - started < 5
        assert "still in flight after the drain timeout" in caplog.text
        assert server.repository.versions("lin") == [2]
        assert ("lin", "1") not in server.repository.stats


def test_a_version_loaded_again_while_it_drains_is_an_instance_of_its_own(store_root: Path):
    with _serve(store_root) as server:
        repository = server.repository

        def retire() -> Any:
            return asyncio.run_coroutine_threadsafe(repository.retire("lin", 2), server.loop)

        server.load(2, candidate(store_root, 2))
        old = repository.get("lin", 2)
        _stuck(server, old, 1)
        first = retire()
        time.sleep(0.05)
        assert not first.done() and repository.versions("lin") == [1]
        server.load(2, candidate(store_root, 2))  # the supervisor gave up waiting: again
        new = repository.get("lin", 2)
        assert new is not old
        _stuck(server, old, 0)
        first.result(10)
        # the old instance's release leaves the new one's figures alone
        assert repository.stats[("lin", "2")] is new.stats
        # a retirement while an older instance still drains retires the active one too
        _stuck(server, new, 1)
        second = retire()
        server.load(2, candidate(store_root, 2))
        newest = repository.get("lin", 2)
        third = retire()
        time.sleep(0.05)
        assert repository.versions("lin") == [1] and newest.retired
        assert not second.done() and not third.done()
        _stuck(server, new, 0)
        second.result(10)
        third.result(10)
        assert ("lin", "2") not in repository.stats
        assert _version_of(httpx.post(f"{server.url}/v2/models/lin/infer", json=BODY)) == 1


# -- loads that fail -----------------------------------------------------------------------------


def test_a_corrupt_archive_fails_to_load_with_its_reason(
    server: Server, http: httpx.Client, store_root: Path, tmp_path: Path
):
    corrupt = corrupt_copy(candidate(store_root, 2), tmp_path / "corrupt")
    with pytest.raises(ModelLoadFailed) as failure:
        server.run(server.repository.prepare("lin", 7, corrupt))
    message = str(failure.value)
    assert message.startswith("model 'lin' version 7: integrity check failed")
    assert "model.onnx" in message
    assert server.repository.pending() == []
    assert _version_of(http.post("/v2/models/lin/infer", json=BODY)) == 1


def test_a_graph_no_engine_can_build_fails_to_load_with_its_reason(server: Server, tmp_path: Path):
    store = ModelStore(tmp_path / "broken")
    manifest = Manifest.read(candidate(server.repository.settings.store or Path(), 2))
    broken = manifest.model_copy(update={"files": {}})
    path = store.write(broken, lambda d: (d / "model.onnx").write_bytes(b"not a graph")).path
    with pytest.raises(ModelLoadFailed, match=r"^model 'lin' version 8: cannot build the runtime"):
        server.run(server.repository.prepare("lin", 8, path))


def test_loading_the_same_version_twice_builds_once(server: Server, store_root: Path):
    async def twice() -> tuple[Any, Any]:
        path = candidate(store_root, 2)
        return await asyncio.gather(
            server.repository.prepare("lin", 2, path), server.repository.prepare("lin", 2, path)
        )

    first, second = server.run(twice())
    assert first is second
    server.run(server.repository.discard("lin", 2))
    assert server.repository.pending() == [] and server.repository.versions("lin") == [1]


def test_discarding_a_build_in_progress_answers_at_once_and_releases_it_when_built(
    server: Server,
    store_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    import torchferry.serving.repository as repository_module

    gate = threading.Event()
    real_build = repository_module.build_version

    def slow_build(*args: Any) -> Any:
        assert gate.wait(30)
        return real_build(*args)

    monkeypatch.setattr(repository_module, "build_version", slow_build)
    repository = server.repository
    path = candidate(store_root, 2)
    loading = asyncio.run_coroutine_threadsafe(repository.prepare("lin", 2, path), server.loop)
    time.sleep(0.1)
    started = time.monotonic()
    server.run(repository.discard("lin", 2), timeout=5)  # the build still runs
    assert time.monotonic() - started < 1
    with pytest.raises(Conflict, match="version 2 was discarded before it was activated"):
        server.call(lambda: repository.activate("lin", 2))
    with caplog.at_level("INFO", logger="torchferry.repository"):
        gate.set()
        with pytest.raises(ModelLoadFailed, match="discarded while it was loading"):
            loading.result(30)
        deadline = time.monotonic() + 10
        while "unloaded lin version 2" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    assert "unloaded lin version 2" in caplog.text
    assert server.call(repository.pending) == [] and repository.versions("lin") == [1]
    # loaded again, it serves
    server.load(2, path)
    assert _version_of(httpx.post(f"{server.url}/v2/models/lin/versions/2/infer", json=BODY)) == 2


# -- shadow and stats ----------------------------------------------------------------------------


def _stats(server: Server, version: int, drain: bool = False) -> dict[str, Any]:
    return server.call(lambda: server.repository.get("lin", version).stats.report(drain))


def _wait_compared(server: Server, version: int, rows: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while (stats := _stats(server, version))["compared"] < rows and time.monotonic() < deadline:
        time.sleep(0.02)
    return stats


def test_shadow_agreement_is_total_for_a_copy_and_partial_for_a_perturbed_version(
    store_root: Path,
):
    with _serve(store_root, metrics_port=1) as server:  # metrics on (nothing listens here)
        server.load(2, candidate(store_root, 2))
        server.load(3, candidate(store_root, 3))
        rows = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
        with httpx.Client(base_url=server.url, timeout=30) as web:

            def send(routes: Routes) -> set[int]:
                server.routes(routes)
                versions = set()
                for pair in rows.reshape(20, 2, 4):
                    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4],
                                        "data": pair.ravel().tolist()}]}  # fmt: skip
                    versions.add(_version_of(web.post("/v2/models/lin/infer", json=body)))
                return versions

            assert send(Routes(default=1, shadow=Shadow(version=2))) == {1}
            same = _wait_compared(server, 2, 40)
            assert (same["compared"], same["agreed"], same["max_abs_diff"]) == (40, 40, 0.0)
            assert send(Routes(default=1, shadow=Shadow(version=3))) == {1}
            perturbed = _wait_compared(server, 3, 40)
            assert perturbed["compared"] == 40 and perturbed["agreed"] < 40
            assert perturbed["max_abs_diff"] > 0.1
            # a request that names its version is never mirrored
            web.post("/v2/models/lin/versions/1/infer", json=BODY)
            time.sleep(0.1)
            assert _stats(server, 3)["compared"] == 40
        labels = {"model": "lin", "version": "3"}
        assert REGISTRY.get_sample_value("torchferry_shadow_rows_total", labels) == 40
        agreed = REGISTRY.get_sample_value("torchferry_shadow_agreed_rows_total", labels)
        assert agreed == perturbed["agreed"]
        gauge = REGISTRY.get_sample_value("torchferry_shadow_max_abs_diff", labels)
        assert gauge == pytest.approx(perturbed["max_abs_diff"])


class _SlowShadow:
    """Enough of a shadow version for ``Shadows.mirror``: its batcher answers after ``delay``."""

    name, version, retired, inflight = "lin", 2, False, 0

    def __init__(self, delay: float) -> None:
        self.stats = SimpleNamespace(compared_rows=lambda *figures: self.compared.append(figures))
        self.compared: list[tuple[Any, ...]] = []
        self.signature = SimpleNamespace(output_names=["y"])
        self.batcher = SimpleNamespace(submit=self._submit)
        self.delay = delay

    async def _submit(self, inputs: Any, timeout: Any) -> dict[str, np.ndarray]:
        await asyncio.sleep(self.delay)
        return {"y": inputs["x"]}


@pytest.mark.parametrize(("delay", "compared"), [(0.05, 1), (30.0, 0)])
def test_closing_the_shadows_waits_for_their_mirrors_at_most_the_limit(delay, compared):
    async def scenario() -> tuple[float, _SlowShadow]:
        shadows = Shadows(metrics_on=False, timeout_s=None)
        shadow = _SlowShadow(delay)
        rows = {"x": np.ones((2, 3), np.float32)}
        shadows.mirror(shadow, shadow, rows, {"y": rows["x"]})  # type: ignore[arg-type]
        started = time.monotonic()
        await shadows.close(0.3)
        return time.monotonic() - started, shadow

    took, shadow = asyncio.run(scenario())
    assert took < 5 and len(shadow.compared) == compared and shadow.inflight == 0


def test_the_apps_drain_closes_the_shadows_before_the_batchers(
    store_root: Path, monkeypatch: pytest.MonkeyPatch
):
    order: list[str] = []
    shadows_close, repository_close = Shadows.close, ModelRepository.close

    async def closing_shadows(self: Shadows, timeout_s: float) -> None:
        order.append(f"shadows {timeout_s}")
        await shadows_close(self, timeout_s)

    async def closing_repository(self: ModelRepository) -> None:
        order.append("repository")
        await repository_close(self)

    monkeypatch.setattr(Shadows, "close", closing_shadows)
    monkeypatch.setattr(ModelRepository, "close", closing_repository)
    with _serve(store_root, drain_timeout_s=7.0):
        pass
    assert order == ["shadows 7.0", "repository"]


def test_stats_count_requests_errors_and_drain_latencies(server: Server, http: httpx.Client):
    for _ in range(5):
        assert http.post("/v2/models/lin/infer", json=BODY).status_code == 200
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    for _ in range(2):
        assert http.post("/v2/models/lin/infer", json=bad).status_code == 400
    time.sleep(0.05)  # observers run once the answer has gone
    kept = _stats(server, 1)
    assert (kept["requests"], kept["errors"], kept["latencies_ms"]) == (7, 0, [])
    drained = _stats(server, 1, drain=True)
    assert drained["requests"] == 7 and len(drained["latencies_ms"]) == 7
    assert all(0 < ms < 10_000 for ms in drained["latencies_ms"])
    assert _stats(server, 1, drain=True)["latencies_ms"] == []
    assert (drained["compared"], drained["agreed"], drained["max_abs_diff"]) == (0, 0, None)


# -- which version answered, and the traffic key -------------------------------------------------


def _grpc_request(version: str = "", key: str | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="lin", model_version=version)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.array([ROW], np.float32).tobytes())
    if key is not None:
        request.parameters["traffic_key"].string_param = key
    return request


def _grpc_version(target: str, request: pb.ModelInferRequest, metadata: tuple = ()) -> int:
    with grpc.insecure_channel(target) as channel:
        response, call = GRPCInferenceServiceStub(channel).ModelInfer.with_call(
            request, metadata=metadata, timeout=30
        )
    # on the final status, with the request id: no metadata batch of its own
    trailing = dict(call.trailing_metadata())
    assert trailing["x-model-version"] == response.model_version and trailing["x-request-id"]
    assert "x-model-version" not in dict(call.initial_metadata())
    return int(response.model_version)


def _grpc_failure(target: str, request: pb.ModelInferRequest) -> tuple[grpc.StatusCode, dict]:
    """A failed call's status and trailing metadata."""
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as failure:
        GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    error: Any = failure.value
    return error.code(), dict(error.trailing_metadata() or ())


def _binary_body(parameters: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    header = orjson.dumps(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                        "parameters": {"binary_data_size": 16}}],
            "parameters": parameters,
        }
    )  # fmt: skip
    body = header + np.array([ROW], np.float32).tobytes()
    return body, {"Inference-Header-Content-Length": str(len(header))}


def _carriers(url: str, target: str) -> dict[str, Callable[[str | None, str | None], int]]:
    """Each way a request can reach ``lin`` unversioned: (header key, parameter key) ->
    the version that answered."""
    web = httpx.Client(base_url=url, timeout=30)

    def headers(key: str | None) -> dict[str, str]:
        return {"X-Traffic-Key": key} if key is not None else {}

    def v2_json(header: str | None, parameter: str | None) -> int:
        body = dict(BODY, parameters={"traffic_key": parameter}) if parameter else BODY
        return _version_of(web.post("/v2/models/lin/infer", json=body, headers=headers(header)))

    def v2_binary(header: str | None, parameter: str | None) -> int:
        body, extra = _binary_body({"traffic_key": parameter} if parameter else {})
        response = web.post(
            "/v2/models/lin/infer", content=body, headers={**extra, **headers(header)}
        )
        return _version_of(response)

    def v1(header: str | None, parameter: str | None) -> int:
        response = web.post(
            "/v1/models/lin:predict", json={"instances": [ROW]}, headers=headers(header)
        )
        return _version_of(response)

    def predict(header: str | None, parameter: str | None) -> int:
        response = web.post("/predict/lin", json={"data": [ROW]}, headers=headers(header))
        assert response.json()["model_version"] == response.headers["x-model-version"]
        return _version_of(response)

    def torchserve(header: str | None, parameter: str | None) -> int:
        return _version_of(web.post("/predictions/lin", json=[ROW], headers=headers(header)))

    def grpc_call(header: str | None, parameter: str | None) -> int:
        metadata = (("x-traffic-key", header),) if header is not None else ()
        return _grpc_version(target, _grpc_request(key=parameter), metadata)

    return {
        "v2-json": v2_json,
        "v2-binary": v2_binary,
        "v1": v1,
        "predict": predict,
        "torchserve": torchserve,
        "grpc": grpc_call,
    }


def test_every_inference_answer_names_the_version_that_served_it(
    server: Server, http: httpx.Client, store_root: Path
):
    server.load(2, candidate(store_root, 2))
    server.routes(Routes(default=1))
    for name, send in _carriers(server.url, server.grpc_target).items():
        assert send(None, None) == 1, name
    server.routes(Routes(default=2))
    for name, send in _carriers(server.url, server.grpc_target).items():
        assert send(None, None) == 2, name
    # a named version, on every protocol that can name one
    assert _version_of(http.post("/v2/models/lin/versions/1/infer", json=BODY)) == 1
    v1 = http.post("/v1/models/lin/versions/1:predict", json={"instances": [ROW]})
    assert _version_of(v1) == 1
    assert _version_of(http.post("/predict/lin/versions/1", json={"data": [ROW]})) == 1
    assert _version_of(http.post("/predictions/lin/1.0", json=[ROW])) == 1
    assert _grpc_version(server.grpc_target, _grpc_request("1")) == 1
    # a call that reached a version and failed names it too; one that reached none does not
    bad = _grpc_request("1")
    bad.outputs.add(name="nope")  # refused by the data plane, after the version was reached
    code, trailing = _grpc_failure(server.grpc_target, bad)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and trailing["x-model-version"] == "1"
    code, trailing = _grpc_failure(server.grpc_target, _grpc_request("9"))
    assert code == grpc.StatusCode.NOT_FOUND and "x-model-version" not in trailing
    assert trailing["x-request-id"]
    # metadata routes name no version in a header
    assert "x-model-version" not in http.get("/v2/models/lin").headers


def _keys_for(weights: dict[int, int]) -> dict[int, str]:
    """A traffic key that lands on each version, by the sticky rule."""
    total = sum(weights.values())
    bounds, cumulative = [], 0
    for version, weight in sorted(weights.items()):
        cumulative += weight
        bounds.append((cumulative, version))
    found: dict[int, str] = {}
    for i in range(1000):
        key = f"user-{i}"
        point = zlib.crc32(key.encode()) % total
        found.setdefault(next(v for bound, v in bounds if point < bound), key)
    return found


def test_the_traffic_key_routes_sticky_from_every_carrier(server: Server, store_root: Path):
    server.load(2, candidate(store_root, 2))
    weights = {1: 50, 2: 50}
    server.routes(Routes(weights=weights))
    keys = _keys_for(weights)
    for name, send in _carriers(server.url, server.grpc_target).items():
        for version, key in keys.items():
            assert {send(key, None) for _ in range(6)} == {version}, (name, "header", key)
    # a request parameter wins over the header
    other = {1: keys[2], 2: keys[1]}
    for name in ("v2-json", "v2-binary", "grpc"):
        send = _carriers(server.url, server.grpc_target)[name]
        for version, key in keys.items():
            assert {send(other[version], key) for _ in range(4)} == {version}, (name, "param")
    # without a key, both versions answer
    send = _carriers(server.url, server.grpc_target)["v2-json"]
    assert {send(None, None) for _ in range(60)} == {1, 2}


def test_a_routed_request_is_resolved_once_whatever_carries_its_key(
    server: Server, store_root: Path, monkeypatch: pytest.MonkeyPatch
):
    server.load(2, candidate(store_root, 2))
    weights = {1: 50, 2: 50}
    server.routes(Routes(weights=weights))
    keys = _keys_for(weights)
    lookups: list[tuple[Any, Any]] = []
    real_get = server.repository.get

    def counted(name: str, version: Any = None, key: Any = None) -> Any:
        lookups.append((version, key))
        return real_get(name, version, key)

    monkeypatch.setattr(server.repository, "get", counted)
    carriers = _carriers(server.url, server.grpc_target)
    for name in ("v2-json", "v2-binary", "v1", "grpc"):
        lookups.clear()
        header, parameter = keys[2], (keys[1] if name != "v1" else None)
        expected = 1 if parameter else 2
        assert carriers[name](header, parameter) == expected, name
        assert lookups == [(None, parameter or header)], name
