"""The KServe runtime end to end: the server started with exactly the ClusterServingRuntime's
container arguments, against each ``/mnt/models`` layout, queried with the KServe SDK's own
REST (V1 and V2) and gRPC clients.

What differs from a pod, and why: ``{{.Name}}`` is the InferenceService's name, ``/mnt/models``
is a temporary folder, ``$(VAR)`` comes from the container's ``env`` as the kubelet expands it,
and the ports are free ones (``serve_in_subprocess`` appends ``--http_port``, ``--grpc-port``,
``--metrics-port`` and ``--management-port``, which win over the YAML's as the last given).
One server per layout, each asked by all three clients: the clients run in the package's child
process (:mod:`kserve_probe`, which the SDK's protos need; see there), asking every server at
once in one request, and each test here reads its part of the answers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from kserve_layouts import SNAPSHOT_MODEL, STORE_MODEL, build_layouts, expected
from sdk_child import SdkChild, kserve_imported

from torchferry.serving.process import ServerProcess, serve_in_subprocess

RUNTIME = Path(__file__).parents[2] / "deploy" / "kserve" / "cluster-serving-runtime.yaml"
#: The InferenceService's name, which KServe puts in ``{{.Name}}``.
ISVC = "tiny"
#: Layout -> the name it is served by: the InferenceService's, unless the layout names it.
SERVED_AS = {"archive": ISVC, "onnx": ISVC, "store": STORE_MODEL, "torchserve": SNAPSHOT_MODEL}
X = np.arange(8, dtype=np.float32).reshape(2, 4)


def container() -> dict[str, Any]:
    runtime = yaml.safe_load(RUNTIME.read_text())
    (kserve_container,) = runtime["spec"]["containers"]
    return dict(kserve_container)


def _cpus(quantity: str) -> int:
    """A CPU quantity (``"1"``, ``"500m"``) with ``divisor: 1``: rounded up, as the kubelet."""
    if quantity.endswith("m"):
        return math.ceil(int(quantity[:-1]) / 1000)
    return math.ceil(float(quantity))


def _env(spec: dict[str, Any]) -> dict[str, str]:
    """The container's variables as the kubelet gives them (values, and limits.cpu)."""
    values = {}
    for variable in spec.get("env", []):
        if "value" in variable:
            values[variable["name"]] = variable["value"]
            continue
        field = variable["valueFrom"]["resourceFieldRef"]
        assert field["resource"] == "limits.cpu", f"test cannot expand {variable}"
        values[variable["name"]] = str(_cpus(spec["resources"]["limits"]["cpu"]))
    return values


def container_args(name: str, model_dir: Path) -> list[str]:
    spec = container()
    env = _env(spec)
    args = []
    for arg in spec["args"]:
        arg = arg.replace("{{.Name}}", name).replace("/mnt/models", str(model_dir))
        args.append(re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg))
    assert not any("{{" in a or "$(" in a for a in args), args
    return args


@dataclass
class Served:
    layout: str
    server: ServerProcess
    name: str


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_layouts(tmp_path_factory.mktemp("mnt"))


@pytest.fixture(scope="module")
def servers(
    layouts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Served]]:
    """A server per layout, two starting at a time (a start is mostly one process importing
    modules: on two cores, two starts take the time of one)."""
    logs = tmp_path_factory.mktemp("logs")
    with ExitStack() as stack:
        starts = {
            layout: serve_in_subprocess(
                container_args(ISVC, layouts[layout]),
                logs / f"{layout}.log",
                "--http_port",
                timeout=180,
            )
            for layout in SERVED_AS
        }
        with ThreadPoolExecutor(2) as pool:
            started = {layout: pool.submit(start.__enter__) for layout, start in starts.items()}
        for layout, start in starts.items():  # every started one stops, even if one failed
            if started[layout].exception() is None:
                stack.push(start.__exit__)
        served = {
            layout: Served(layout, future.result(), SERVED_AS[layout])
            for layout, future in started.items()
        }
        yield served
        for each in served.values():  # all drain at once; the stack then waits for each
            each.server.process.terminate()


@pytest.fixture(scope="module")
def answers(kserve_sdk: SdkChild, servers: dict[str, Served]) -> dict[str, Any]:
    """layout -> client (``v1``, ``v2-json``, ``v2-binary``, ``grpc``) -> what it got."""
    return kserve_sdk.ask(
        "query",
        {
            "x": X.tolist(),
            "servers": {
                layout: {
                    "url": each.server.url,
                    "grpc_target": each.server.grpc_target,
                    "name": each.name,
                }
                for layout, each in servers.items()
            },
        },
    )


@pytest.fixture(params=sorted(SERVED_AS))
def served(request: pytest.FixtureRequest, servers: dict[str, Served]) -> Served:
    return servers[request.param]


def answer_of(answers: dict[str, Any], served: Served, client: str) -> dict[str, Any]:
    answer = answers[served.layout][client]
    assert "error" not in answer, f"{client} client, {served.layout}:\n{answer['error']}"
    return dict(answer)


def test_v1_rest_client(served: Served, answers: dict[str, Any]) -> None:
    answer = answer_of(answers, served, "v1")
    assert answer["live"] and answer["ready"]
    np.testing.assert_allclose(answer["predictions"], expected(X))


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_rest_client(served: Served, binary: bool, answers: dict[str, Any]) -> None:
    answer = answer_of(answers, served, "v2-binary" if binary else "v2-json")
    assert answer["ready"] and answer["model_ready"]
    assert answer["model_name"] == served.name
    (output,) = answer["outputs"]
    assert output["name"] == "y"
    np.testing.assert_allclose(output["data"], expected(X))


def test_grpc_client(served: Served, answers: dict[str, Any]) -> None:
    answer = answer_of(answers, served, "grpc")
    assert answer["ready"] and answer["model_ready"]
    (output,) = answer["outputs"]
    np.testing.assert_allclose(output["data"], expected(X))


def test_probes_and_metrics(served: Served) -> None:
    """The runtime's probes answer 200 where its ports say, and Prometheus finds metrics."""
    spec = container()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = spec[probe]["httpGet"]
        assert get["port"] == 8080, "probes go to the HTTP port"
        assert httpx.get(served.server.url + get["path"], timeout=10).status_code == 200
    metrics = httpx.get(served.server.metrics_url, timeout=10)
    assert metrics.status_code == 200
    assert f'model="{served.name}"' in metrics.text


def test_supervisor_never_loads_torch(served: Served) -> None:
    """A .mar needs torch to import: that happens in a child process, not the supervisor."""
    maps = Path(f"/proc/{served.server.process.pid}/maps").read_text()
    assert "libtorch" not in maps
    assert served.server.alive(), served.server.output()


def test_the_sdk_stays_out_of_this_process() -> None:
    """``import kserve`` here would break every test importing tritonclient or our protos."""
    assert not kserve_imported()
