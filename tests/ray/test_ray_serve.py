"""torchferry as a Ray Serve application, end to end: one local Ray (2 CPUs) for the whole
module, 2 replicas of a digits store behind Serve's HTTP proxy, and the plain server over the
same store to compare answers with.

The tests run in file order and share the deployment: the answers first, then a rolling
update to a new version under load, then management calls through the manager, then a
replica killed under load (its replacement starts from the state management left).

So they depend on their order and cannot run alone: the rolling update exports version 2,
the management test expects {"2"} served and exports and loads version 3, and the killed
replica's replacement must answer with {"3"}. A deployment per test would cost a Ray and
Serve start each; run the module whole (pytest-xdist keeps a file on one worker)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
import torch
import tritonclient.grpc as grpcclient
from ray import serve
from ray_traffic import client_loop
from tritonclient.utils import InferenceServerException

from torchferry.demo.digits import export_digits, sample_request
from torchferry.ray import RaySettings, deploy
from torchferry.serving.process import ServerProcess, free_ports, serve_in_subprocess
from torchferry.serving.settings import ServerSettings
from torchferry.zoo.digits import DigitsCNN

APP = "torchferry"
#: The plain server's listeners that the comparison does not need.
PLAIN_OFF = ("--no-grpc", "--no-metrics", "--no-management")
PIXELS, _ = sample_request(count=3)
V2_BODY = {
    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [3, 64], "data": PIXELS["data"]}]
}


def new_digits_version(store: Path, seed: int) -> None:
    torch.manual_seed(seed)
    export_digits(DigitsCNN().eval(), store, format="onnx")


def deployment_settings(store: Path) -> RaySettings:
    return RaySettings(
        num_replicas=2,
        num_cpus=0.5,  # room for a replacement beside both replicas on 2 CPUs
        max_surge_percent=100,  # a rolling update starts both new replicas at once
        server=ServerSettings(store=store, threads=1, access_log=False),
    )


@dataclass
class Servers:
    store: Path
    plain: ServerProcess
    #: Serve's HTTP proxy
    proxy: str
    #: Serve's gRPC proxy (host:port)
    grpc_target: str
    settings: RaySettings

    def __iter__(self) -> Iterator[Any]:  # plain, proxy = servers
        return iter((self.plain, self.proxy))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The plain server and Serve's proxies over the same store. The store's export and
    the plain server's start (a thread) overlap Ray's start (the main thread: it sets up
    signal handling)."""
    store = tmp_path_factory.mktemp("ray") / "store"
    plain_args = [*("--store", str(store), "--threads", "1", "--no-access-log"), *PLAIN_OFF]
    with ExitStack() as stack, ThreadPoolExecutor(1) as pool:
        exported = pool.submit(new_digits_version, store, 0)
        plain = pool.submit(stack.enter_context, serve_in_subprocess(plain_args))
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
        stack.callback(ray.shutdown)
        settings = deployment_settings(store)
        settings.server.port, settings.server.grpc_port = free_ports(2)
        serve.start(**settings.proxy_options())  # ray.shutdown takes Serve down with it
        exported.result()
        deploy(settings)
        yield Servers(
            store,
            plain.result(),
            f"http://127.0.0.1:{settings.server.port}",
            f"127.0.0.1:{settings.server.grpc_port}",
            settings,
        )


@pytest.fixture(scope="module")
def store(servers: Servers) -> Path:
    return servers.store


def replica_actors() -> list[str]:
    return sorted(
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(f"SERVE_REPLICA::{APP}#")
    )


def running_replicas() -> int:
    deployment = serve.status().applications[APP].deployments[APP]
    return deployment.replica_states.get("RUNNING", 0)


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


ROUTES = [
    ("/v2/models/digits/infer", V2_BODY),
    ("/v1/models/digits:predict", {"instances": PIXELS["data"]}),
    ("/predict/digits", PIXELS),
    ("/predictions/digits", PIXELS),
]


@pytest.mark.parametrize(("path", "body"), ROUTES, ids=["v2", "v1", "predict", "torchserve"])
def test_answers_equal_the_plain_servers(servers, path, body):
    plain, proxy = servers
    expected = httpx.post(plain.url + path, json=body, timeout=30)
    assert expected.status_code == 200, expected.text
    for _ in range(4):  # both replicas, whichever Serve picks
        answer = httpx.post(proxy + path, json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json() == expected.json()


def test_errors_keep_their_status_through_the_proxy(servers):
    _, proxy = servers
    missing = httpx.post(f"{proxy}/v2/models/nothing/infer", json=V2_BODY, timeout=30)
    assert missing.status_code == 404
    assert "nothing" in missing.json()["error"]
    bad = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    wrong = httpx.post(f"{proxy}/v2/models/digits/infer", json=bad, timeout=30)
    assert wrong.status_code == 400
    assert "pixels" in wrong.json()["error"]
    assert httpx.get(f"{proxy}/v2/health/ready", timeout=30).status_code == 200


def test_kserve_v2_grpc_through_serves_grpc_proxy(servers):
    client = grpcclient.InferenceServerClient(servers.grpc_target)
    # Serve routes gRPC by this metadata once several applications run (the manager too)
    route = {"application": APP}
    assert client.is_server_ready(headers=route)
    assert client.get_model_metadata("digits", headers=route).inputs[0].name == "pixels"
    pixels = grpcclient.InferInput("pixels", [3, 64], "FP32")
    pixels.set_data_from_numpy(np.array(PIXELS["data"], np.float32))
    answer = client.infer("digits", [pixels], headers=route).as_numpy("probabilities")
    expected = httpx.post(f"{servers.proxy}/v2/models/digits/infer", json=V2_BODY, timeout=30)
    expected_data = np.array(expected.json()["outputs"][0]["data"], np.float32)
    assert answer.ravel().tolist() == expected_data.tolist()  # the same float32 values
    with pytest.raises(InferenceServerException) as missing:
        client.infer("nothing", [pixels], headers=route)
    assert missing.value.status() == "StatusCode.NOT_FOUND"
    assert "nothing" in missing.value.message()


def test_a_rolling_update_drops_nothing(servers, store):
    _, proxy = servers
    new_digits_version(store, seed=1)  # version 2: the highest, so the default
    with client_loop(proxy, V2_BODY) as loop:
        time.sleep(0.5)
        deploy(servers.settings.model_copy(update={"revision": "2"}))
        time.sleep(0.5)
    assert loop.failures() == []
    assert {a.version for a in loop.answers} == {1, 2}
    for _ in range(10):
        answer = httpx.post(f"{proxy}/v2/models/digits/infer", json=V2_BODY, timeout=30)
        assert answer.json()["model_version"] == "2"


def versions_answering(proxy: str, count: int = 30) -> set[str]:
    return {
        httpx.post(f"{proxy}/v2/models/digits/infer", json=V2_BODY, timeout=30).json()[
            "model_version"
        ]
        for _ in range(count)
    }


def test_management_calls_reach_every_replica(servers, store):
    _, proxy = servers
    new_digits_version(store, seed=2)  # version 3, not served until management loads it
    assert versions_answering(proxy, 10) == {"2"}
    manage = f"{proxy}/manage"
    loaded = httpx.post(f"{manage}/models", params={"url": "digits/3"}, timeout=120)
    assert loaded.status_code == 200, loaded.text
    assert versions_answering(proxy, 10) == {"2"}  # loaded, not yet the default
    v3 = httpx.post(f"{proxy}/v2/models/digits/versions/3/infer", json=V2_BODY, timeout=30)
    assert v3.status_code == 200
    default = httpx.put(f"{manage}/models/digits/3/set-default", timeout=30)
    assert default.status_code == 200, default.text
    assert versions_answering(proxy) == {"3"}  # in both replicas
    described = httpx.get(f"{manage}/models/digits/all", timeout=30).json()
    assert sorted(int(v["modelVersion"]) for v in described) == [1, 2, 3]
    assert (store / ".torchferry" / "state.json").is_file()


def test_a_killed_replica_is_replaced_while_requests_go_on(servers):
    _, proxy = servers
    before = replica_actors()
    assert len(before) == 2
    with client_loop(proxy, V2_BODY) as loop:
        time.sleep(0.5)
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
        wait_for(lambda: before[0] not in replica_actors() and len(replica_actors()) == 2)
        wait_for(lambda: running_replicas() == 2)
        replaced_at = time.monotonic()
        time.sleep(0.5)
    in_flight = [a for a in loop.failures() if a.sent < killed_at]
    after = [a for a in loop.failures() if a.sent >= killed_at]
    print(
        f"\nkill: {loop.count_since(killed_at)} requests sent after the kill, "
        f"{len(after)} failed; {len(in_flight)} in flight at the kill failed "
        f"({sorted({a.outcome for a in loop.failures()})}); replaced in "
        f"{replaced_at - killed_at:.1f} s"
    )
    assert loop.count_since(killed_at) > 10
    assert after == []
    assert len(in_flight) <= loop.threads  # at most the requests the dead replica held
    # the replacement started from the state management left
    assert versions_answering(proxy) == {"3"}
