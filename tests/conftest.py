"""Shared fixtures: a small model store built once per session, and live servers over it.

``live_server`` runs the real ``python -m torchferry.cli serve`` in a subprocess on free
ports (HTTP and gRPC) and waits for ``/v2/health/ready``; tests talk HTTP to
``live_server.url`` and gRPC to ``live_server.grpc_target``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from torchferry.archive import BatchingSpec, HandlerSpec, Manifest, ModelStore
from torchferry.cores import default_threads
from torchferry.runtimes.weight_cache import CACHE_ENV
from torchferry.serving.logs import unconfigure_logging
from torchferry.serving.process import ServerProcess, serve_in_subprocess
from torchferry.signature import ModelSignature, TensorSpec

Specs = list[tuple[str, str, tuple[int, ...]]]
#: Every V2 datatype, for the identity model ``alltypes``.
ALL_TYPES = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip
_ONNX_TYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}  # fmt: skip
IMAGE_LABELS = ["cat", "dog", "bird"]


def _signature(inputs: Specs, outputs: Specs) -> ModelSignature:
    return ModelSignature(
        inputs=tuple(TensorSpec(name=n, datatype=d, shape=s) for n, d, s in inputs),
        outputs=tuple(TensorSpec(name=n, datatype=d, shape=s) for n, d, s in outputs),
    )


def write_model(
    store: ModelStore,
    name: str,
    version: int,
    graph: onnx.ModelProto | torch.jit.ScriptModule,
    inputs: Specs,
    outputs: Specs,
    handler: HandlerSpec | None = None,
    files: dict[str, Any] | None = None,
    batching: BatchingSpec | None = None,
) -> None:
    """One archive written through ``ModelStore.write``, ONNX or TorchScript by graph type."""
    is_onnx = isinstance(graph, onnx.ModelProto)
    runtime, graph_file = ("onnxruntime", "model.onnx") if is_onnx else ("torchscript", "model.pt")
    manifest = Manifest(
        name=name,
        version=version,
        runtime=runtime,
        graphs={runtime: graph_file},
        signature=_signature(inputs, outputs),
        handler=handler or HandlerSpec(),
        batching=batching or BatchingSpec(max_batch_size=32, max_delay_ms=1.0),
        source="tests",
    )

    def populate(directory: Path) -> None:
        if is_onnx:
            onnx.save(graph, str(directory / graph_file))
        else:
            graph.save(str(directory / graph_file))
        for file_name, content in (files or {}).items():
            (directory / file_name).write_text(json.dumps(content), encoding="utf-8")

    store.write(manifest, populate)


def _onnx(nodes: list, inputs: Specs, outputs: Specs, inits: list | None = None) -> onnx.ModelProto:
    def info(name: str, datatype: str, shape: tuple[int, ...]) -> onnx.ValueInfoProto:
        dims = ["N" if d == -1 else d for d in shape]
        return helper.make_tensor_value_info(name, _ONNX_TYPES[datatype], dims)

    graph = helper.make_graph(
        nodes, "g", [info(*s) for s in inputs], [info(*s) for s in outputs], inits or []
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def adder_graph(scale: float) -> onnx.ModelProto:
    """y = x * scale + 1 and total = row sums of x, for x of shape [N, 4]."""
    inits = [
        numpy_helper.from_array(np.array(scale, np.float32), "scale"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "one"], ["y"]),
        helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0),
    ]
    return _onnx(nodes, ADDER_IN, ADDER_OUT, inits)


ADDER_IN: Specs = [("x", "FP32", (-1, 4))]
ADDER_OUT: Specs = [("y", "FP32", (-1, 4)), ("total", "FP32", (-1,))]


class _Multi(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + b.to(torch.float32), b * 2


class _Faulty(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.sum(dim=1) < 0).any()):
            raise RuntimeError("negative sum not allowed")
        return x * 2


def mlp_module() -> torch.nn.Module:
    """A small MLP with fixed random weights, exported into the store as ``mlp``."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def build_store(root: Path) -> ModelStore:
    """mlp (through ``torchferry.export``), adder v1+v2, batchy (adder for the batching test), strings, alltypes, multi (TorchScript,
    two inputs), faulty (TorchScript that raises on a negative sum), tiny_image (image handler)."""
    store = ModelStore(root)
    from torchferry.export import export

    export(
        mlp_module(), torch.zeros(1, 4), name="mlp", store=root,
        input_names=["features"], output_names=["scores"],
    )  # fmt: skip
    write_model(store, "adder", 1, adder_graph(2.0), ADDER_IN, ADDER_OUT)
    write_model(store, "adder", 2, adder_graph(3.0), ADDER_IN, ADDER_OUT)
    write_model(store, "batchy", 1, adder_graph(2.0), ADDER_IN, ADDER_OUT)
    text_in: Specs = [("text", "BYTES", (-1,))]
    text_out: Specs = [("shout", "BYTES", (-1,)), ("same", "BYTES", (-1,))]
    bang = helper.make_tensor("bang", TensorProto.STRING, [1], [b"!"])
    text_nodes = [
        helper.make_node("StringConcat", ["text", "bang"], ["shout"]),
        helper.make_node("Identity", ["text"], ["same"]),
    ]
    write_model(
        store, "strings", 1, _onnx(text_nodes, text_in, text_out, [bang]), text_in, text_out
    )
    all_in: Specs = [(f"in_{t}", t, (-1, 2)) for t in ALL_TYPES]
    all_out: Specs = [(f"out_{t}", t, (-1, 2)) for t in ALL_TYPES]
    nodes = [helper.make_node("Identity", [f"in_{t}"], [f"out_{t}"]) for t in ALL_TYPES]
    write_model(store, "alltypes", 1, _onnx(nodes, all_in, all_out), all_in, all_out)
    multi_in: Specs = [("a", "FP32", (-1, 3)), ("b", "INT64", (-1, 3))]
    multi_out: Specs = [("sum", "FP32", (-1, 3)), ("twice", "INT64", (-1, 3))]
    write_model(store, "multi", 1, torch.jit.script(_Multi()), multi_in, multi_out)
    faulty_io: Specs = [("x", "FP32", (-1, 2))]
    write_model(
        store, "faulty", 1, torch.jit.script(_Faulty()), faulty_io, [("y", "FP32", (-1, 2))]
    )
    weights = np.arange(64 * 3, dtype=np.float32).reshape(64, 3) % 7 - 3
    image_in: Specs = [("pixels", "FP32", (-1, 1, 8, 8))]
    image_out: Specs = [("logits", "FP32", (-1, 3))]
    image_nodes = [
        helper.make_node("Flatten", ["pixels"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    graph = _onnx(image_nodes, image_in, image_out, [numpy_helper.from_array(weights, "w")])
    config = {"color": "L", "resize": 8, "crop": 8, "top_k": 2, "labels": "labels.json"}
    write_model(
        store, "tiny_image", 1, graph, image_in, image_out,
        handler=HandlerSpec(name="image", config=config), files={"labels.json": IMAGE_LABELS},
    )  # fmt: skip
    return store


def _share_the_cores_between_xdist_workers() -> None:
    """Under ``pytest -n N`` each worker trains and exports with its share of the cores:
    N processes each running torch's intra-op pool over every core spin on one another (a
    12-epoch training took 108 s instead of 14 s on 2 cores)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, default_threads() // workers))


_share_the_cores_between_xdist_workers()

#: The longest test files, longest first: pytest-xdist hands whole files to workers in
#: collection order, so starting these first keeps one worker from being left with a long
#: file at the end while the other idles. Pairs that start together should not both be
#: CPU-bound (Ray's cluster, then a pip install that is mostly disk).
LONGEST_FILES = (
    "tests/ray/test_ray_serve.py",
    "tests/docker/test_image_install.py",
    "tests/serving/test_lifecycle_served.py",
    "tests/demo/test_demo.py",
    "tests/kserve/test_kserve_runtime.py",
    "tests/serving/test_fuzz_openapi.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    root = config.rootpath

    def order(item: pytest.Item) -> int:
        return rank.get(item.path.relative_to(root).as_posix(), len(rank))

    items.sort(key=order)  # stable: every other file keeps its place


@pytest.fixture(scope="session", autouse=True)
def _weight_cache_of_this_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The shared-weights cache (``runtimes/weight_cache``) in the session's temporary
    directory, for this process and the servers it starts: not the user's ``~/.cache``,
    which every test run would fill with one entry per random model."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("weight-cache")))
        yield


@pytest.fixture(autouse=True)
def _logging_as_pytest_left_it() -> Iterator[None]:
    """A test that ran a server's start in this process (the CLI's ``serve`` that fails
    early, a Ray driver) leaves torchferry's log handler on the root logger, where it takes
    the access lines a later test reads through ``caplog``: which test came first depends on
    how pytest-xdist spreads the files."""
    yield
    unconfigure_logging()


@pytest.fixture(scope="session")
def start_server() -> Callable[..., AbstractContextManager[ServerProcess]]:
    """``with start_server(args, log_path, port_flag="--port") as server:`` runs another server
    (a fixture, because test modules cannot import from this conftest by name)."""
    return serve_in_subprocess


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    return build_store(tmp_path_factory.mktemp("store") / "models")


@pytest.fixture(scope="session")
def mlp() -> torch.nn.Module:
    """The eager twin of the store's exported ``mlp`` model."""
    return mlp_module().eval()


@pytest.fixture(scope="session")
def live_server(
    model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The whole test store served with defaults, plus slow batching for ``batchy``."""
    args = [
        "--store", str(model_store.root), "--threads", "1", "--log-level", "warning",
        "--batching", "batchy:max_batch_size=16,max_delay_ms=50",
    ]  # fmt: skip
    with serve_in_subprocess(args, tmp_path_factory.mktemp("logs") / "server.log") as server:
        yield server


@pytest.fixture(scope="session")
def http(live_server: ServerProcess) -> Iterator[httpx.Client]:
    with live_server.client() as client:
        yield client


@pytest.fixture
def assert_alive(live_server: ServerProcess) -> Callable[[], None]:
    def check() -> None:
        assert live_server.alive(), live_server.log.read_text()
        assert httpx.get(f"{live_server.url}/v2/health/live", timeout=5).status_code == 200

    return check
