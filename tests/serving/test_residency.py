"""The residency layer (``--memory-budget``) on real ONNX versions in a real repository:
least recently used idle versions go first, busy ones never, a load waits for room until
its deadline (then 503), loads of one version are shared, and a version larger than the
whole budget is refused at start."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from versions_store import WEIGHTS, write_lin

from torchferry.archive import ModelStore
from torchferry.errors import ModelNotReady, Overloaded, TorchferryError
from torchferry.serving.repository import LoadedModel, ModelRepository
from torchferry.serving.residency import estimate_bytes
from torchferry.serving.settings import ServerSettings
from torchferry.serving.shadow import Shadows
from torchferry.serving.worker import worker_status

NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    store = ModelStore(tmp_path_factory.mktemp("store"))
    for number, name in enumerate(NAMES):
        write_lin(store, 1, WEIGHTS * (number + 1), name=name)
    return store


@pytest.fixture(scope="module")
def size(store: ModelStore) -> int:
    return estimate_bytes(store.open("a", 1), "onnxruntime")


def repository(
    store: ModelStore, budget: int, timeout_s: float | None = None, share_weights: bool = True
) -> ModelRepository:
    settings = ServerSettings(
        store=store.root, threads=1, metrics_port=None, memory_budget_bytes=budget,
        request_timeout_s=timeout_s, share_weights=share_weights,
    )  # fmt: skip
    repo = ModelRepository(settings)
    repo.load_store(store)
    return repo


@pytest.fixture
def two(store: ModelStore, size: int) -> Iterator[ModelRepository]:
    """Room for two of the three versions."""
    repo = repository(store, 2 * size + size // 2)
    yield repo
    asyncio.run(repo.close())


def models(repo: ModelRepository) -> dict[str, LoadedModel]:
    return {name: repo.get(name) for name in NAMES}


def resident(repo: ModelRepository) -> list[str]:
    assert repo.residency is not None
    return [m.name for m in repo.residency.resident()]  # type: ignore[attr-defined]


def test_versions_are_registered_but_not_resident_until_used(two, size):
    m = models(two)
    assert [v.resident for v in m.values()] == [False, False, False]
    assert all(v.size_bytes == size for v in m.values())
    assert two.residency is not None and two.residency.used_bytes == 0


def test_the_least_recently_used_idle_version_is_evicted(two, size):
    residency, m = two.residency, models(two)
    assert residency is not None

    async def run() -> None:
        await residency.ensure(m["a"], None)
        await residency.ensure(m["b"], None)
        await residency.ensure(m["a"], None)  # a is used again: b is now the oldest
        await residency.ensure(m["c"], None)
        # and the answers are each version's own
        x = np.ones((1, 4), np.float32)
        for name in ("a", "c"):
            scale = NAMES.index(name) + 1
            np.testing.assert_allclose(m[name].runtime.infer({"x": x})["y"], x @ WEIGHTS * scale)

    asyncio.run(run())
    assert resident(two) == ["a", "c"]
    assert not m["b"].resident and residency.used_bytes == 2 * size
    assert m["b"].runtime.session is None  # type: ignore[attr-defined]
    # a late call on the released engine is a 503 to retry, not a crash
    with pytest.raises(ModelNotReady, match="'b' is not loaded"):
        m["b"].runtime.infer({"x": np.ones((1, 4), np.float32)})


def test_a_busy_version_is_never_evicted_and_a_load_waits_then_503(store, size):
    repo = repository(store, size + size // 2, timeout_s=0.3)  # room for one
    residency, m = repo.residency, models(repo)
    assert residency is not None

    async def run() -> None:
        await residency.ensure(m["a"], None)
        m["a"].inflight = 1  # a request in flight, as the data plane counts it
        started = time.monotonic()
        with pytest.raises(Overloaded, match=r"memory budget .* is full of busy models") as info:
            await residency.ensure(m["b"], None)
        waited = time.monotonic() - started
        assert 0.25 < waited < 2.0  # --request-timeout bounds the wait
        assert info.value.retry_after is not None and "'b' version 1" in info.value.message
        assert m["a"].resident and not m["b"].resident
        # a request with its own deadline waits only until then
        with pytest.raises(Overloaded):
            await residency.ensure(m["b"], time.monotonic() + 0.05)
        # once a becomes idle while b waits, b takes its room
        waiting = asyncio.ensure_future(residency.ensure(m["b"], None))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        m["a"].inflight = 0
        await waiting
        assert resident(repo) == ["b"] and not m["a"].resident

    try:
        asyncio.run(run())
    finally:
        asyncio.run(repo.close())


def test_requests_for_a_cold_version_share_one_load(two, size):
    residency, m = two.residency, models(two)
    assert residency is not None

    async def run() -> None:
        await asyncio.gather(*(residency.ensure(m["a"], None) for _ in range(5)))

    asyncio.run(run())
    assert resident(two) == ["a"] and residency.used_bytes == size


def test_a_release_frees_its_room(two, size):
    residency, m = two.residency, models(two)
    assert residency is not None
    asyncio.run(residency.ensure(m["a"], None))
    asyncio.run(two.retire("a", 1))
    assert residency.used_bytes == 0 and resident(two) == []


def test_a_version_larger_than_the_budget_is_refused_at_start(store, size):
    with pytest.raises(TorchferryError, match=r"more than the whole memory budget"):
        repository(store, size - 1)


def test_without_a_budget_every_version_is_loaded_at_start(store):
    repo = ModelRepository(ServerSettings(store=store.root, threads=1, metrics_port=None))
    repo.load_store(store)
    assert repo.residency is None and all(v.resident for v in models(repo).values())
    asyncio.run(repo.close())


def test_a_broken_graph_fails_its_request_not_the_start(tmp_path: Path, store, size):
    broken = ModelStore(tmp_path)
    path = write_lin(broken, 1, WEIGHTS, name="a")
    (path / "model.onnx").chmod(0o644)
    # private weights: a shared cache entry made from an equal graph (same SHA-256) by an
    # earlier test would serve it whatever this file now holds
    repo = repository(broken, 10 * size, share_weights=False)
    graph = path / "model.onnx"
    graph.write_bytes(b"\0" * graph.stat().st_size)  # after the start's hash check
    residency = repo.residency
    assert residency is not None
    with pytest.raises(TorchferryError, match="'a' version 1 could not be loaded"):
        asyncio.run(residency.ensure(repo.get("a"), None))
    assert residency.used_bytes == 0
    asyncio.run(repo.close())


def test_a_management_load_makes_room_and_the_status_says_what_is_resident(
    two, size, tmp_path: Path
):
    residency, m = two.residency, models(two)
    assert residency is not None
    path = write_lin(ModelStore(tmp_path), 2, WEIGHTS, name="c")

    async def run() -> LoadedModel:
        await residency.ensure(m["a"], None)
        await residency.ensure(m["b"], None)
        new = await two.prepare("c", 2, path)  # loaded and warmed up, as without a budget
        two.activate("c", 2)
        return new

    new = asyncio.run(run())
    assert resident(two) == ["b", "c"] and new.resident and not m["a"].resident
    assert worker_status(two, 0, True, False)["memory"] == {
        "budget_bytes": residency.budget_bytes,
        "used_bytes": 2 * size,
        "resident": [{"name": "b", "version": 1}, {"name": "c", "version": 2}],
    }


def test_a_mirror_loads_a_cold_shadow_version(two):
    """A shadow version that is not resident is loaded by the mirror itself (in its own
    task), and compared as usual."""
    residency, m = two.residency, models(two)
    assert residency is not None
    shadows = Shadows(False, 5.0, residency)
    x = np.ones((2, 4), np.float32)

    async def run() -> None:
        await two.start()
        await residency.ensure(m["a"], None)
        primary = m["a"].runtime.infer({"x": x})
        shadows.mirror(m["a"], m["b"], {"x": x}, primary)
        await shadows.close(5.0)
        assert m["b"].resident and m["b"].stats.compared == 2
        await two.close()  # on the loop its batchers run on

    asyncio.run(run())


def test_a_version_released_while_it_loads_frees_its_room_when_the_load_ends(two):
    residency, m = two.residency, models(two)
    assert residency is not None

    async def run() -> None:
        loading = asyncio.ensure_future(residency.ensure(m["a"], None))
        await asyncio.sleep(0)  # the load has started
        residency.forget(m["a"])  # as an unload whose drain timed out does
        await loading

    asyncio.run(run())
    assert not m["a"].resident and residency.used_bytes == 0 and resident(two) == []
    assert m["a"].runtime.session is None  # type: ignore[attr-defined]


def test_a_shared_load_waits_for_room_as_long_as_the_server_allows_not_its_first_caller(
    store, size
):
    repo = repository(store, size + size // 2, timeout_s=2.0)  # room for one
    residency, m = repo.residency, models(repo)
    assert residency is not None

    async def run() -> None:
        await residency.ensure(m["a"], None)
        m["a"].inflight = 1
        hurried = asyncio.ensure_future(residency.ensure(m["b"], time.monotonic() + 0.01))
        patient = asyncio.ensure_future(residency.ensure(m["b"], None))  # shares the load
        with pytest.raises(Overloaded):
            await hurried  # its own deadline passed
        await asyncio.sleep(0.1)
        m["a"].inflight = 0
        await patient  # the load went on waiting for room, past the first caller's deadline
        assert resident(repo) == ["b"]

    try:
        asyncio.run(run())
    finally:
        asyncio.run(repo.close())


def test_a_version_whose_batch_still_computes_is_not_evicted(store, size):
    repo = repository(store, size + size // 2, timeout_s=0.2)  # room for one
    residency, m = repo.residency, models(repo)
    assert residency is not None

    async def run() -> None:
        await residency.ensure(m["a"], None)
        # a batch on instance 0 whose callers gave up: no request in flight, none queued
        m["a"].batcher._busy[0] = (time.perf_counter(), 1)
        assert m["a"].batcher.computing == 1 and m["a"].inflight == 0
        with pytest.raises(Overloaded):
            await residency.ensure(m["b"], None)
        assert m["a"].resident
        del m["a"].batcher._busy[0]  # the batch ended
        await residency.ensure(m["b"], None)
        assert resident(repo) == ["b"]

    try:
        asyncio.run(run())
    finally:
        asyncio.run(repo.close())


def test_instances_that_share_one_mapped_copy_count_it_once(store, size):
    archive = store.open("a", 1)
    assert estimate_bytes(archive, "onnxruntime", 3, shares_weights=True) == size
    assert estimate_bytes(archive, "onnxruntime", 3, shares_weights=False) == 3 * size
    # as the repository counts a version served with 3 instances, sharing on and off
    for share, counted in ((True, size), (False, 3 * size)):
        settings = ServerSettings(
            store=store.root, threads=1, metrics_port=None, memory_budget_bytes=10 * size,
            share_weights=share, batching={"instances": 3},
        )  # fmt: skip
        assert ModelRepository(settings)._estimate(archive) == counted
