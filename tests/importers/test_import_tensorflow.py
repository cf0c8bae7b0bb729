"""TensorFlow and Keras models imported through tf2onnx, then served over every protocol.

The models are built and imported by ``tensorflow_models.py`` in a process of its own
(TensorFlow never loads into this test process), ``classifier.keras`` with the ``torchferry
import`` command, as a user would. A real server then serves the store, and
each protocol's client must get TensorFlow's own answers for the same inputs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from torchferry.archive import ModelStore
from torchferry.errors import ArchiveError
from torchferry.importers import import_model

HERE = Path(__file__).parent
MISSING = [m for m in ("tensorflow", "keras", "tf2onnx") if importlib.util.find_spec(m) is None]
if MISSING:  # under CI the test extra must bring them: a missing one fails the run instead
    reason = f"needs the tensorflow extra ({', '.join(MISSING)} missing)"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)

#: Served model -> (its model in expected.npz, its inputs, {served output: TensorFlow's}).
SERVED = {
    "keras_classifier": ("classifier", ["pixels", "extra"], {"probs": "probs"}),
    "keras_export": ("classifier", ["pixels", "extra"], {"output_0": "probs"}),
    "tf_module": ("module", ["a", "b"], {"y": "y", "z": "z"}),
}
TOLERANCE = 1e-5


def _run(command: list[str], log: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    log.write_text(done.stdout + done.stderr, encoding="utf-8")
    assert done.returncode == 0, (
        f"{command[1:3]} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    )
    return done


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tensorflow")
    out, store = root / "models", root / "store"
    out.mkdir()
    build = [sys.executable, str(HERE / "tensorflow_models.py"), str(out), str(store)]
    done = _run(build, root / "build.log")  # with what `torchferry import` printed
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    with np.load(out / "expected.npz") as expected:
        arrays = dict(expected)
    return {"out": out, "store": store, "report": report, "expected": arrays, "cli": done.stdout}


def _tensors(specs: list[dict[str, Any]]) -> list[tuple[str, str, list[int]]]:
    return [(s["name"], s["datatype"], s["shape"]) for s in specs]


def test_the_import_command_converts_a_keras_file_and_checks_it_against_tensorflow(built):
    assert "parity with TensorFlow" in built["cli"]
    assert "converted by tf2onnx" in built["cli"]
    manifest = ModelStore(built["store"]).open("keras_classifier").manifest
    assert manifest.runtime == "onnxruntime" and manifest.source == "import (keras)"
    signature = json.loads(manifest.signature.model_dump_json())
    assert _tensors(signature["inputs"]) == [
        ("pixels", "FP32", [-1, 8, 8, 1]),
        ("extra", "FP32", [-1, 3]),
    ]
    assert _tensors(signature["outputs"]) == [("probs", "FP32", [-1, 5])]
    assert [(r.format, r.batch_size, r.reference) for r in manifest.parity] == [
        ("onnx", 1, "TensorFlow"),
        ("onnx", 3, "TensorFlow"),
    ]
    assert all(r.max_abs_error < 1e-4 for r in manifest.parity)
    assert {"tensorflow", "tf2onnx", "torch", "onnxruntime"} <= set(manifest.framework_versions)


@pytest.mark.parametrize(
    ("name", "source", "inputs", "outputs"),
    [
        ("keras_h5", "import (keras h5)",
         [("pixels", "FP32", [-1, 8, 8, 1]), ("extra", "FP32", [-1, 3])],
         [("probs", "FP32", [-1, 5])]),
        # a SavedModel signature takes its inputs by name, in name order
        ("keras_export", "import (tensorflow savedmodel)",
         [("extra", "FP32", [-1, 3]), ("pixels", "FP32", [-1, 8, 8, 1])],
         [("output_0", "FP32", [-1, 5])]),
        ("tf_module", "import (tensorflow savedmodel)",
         [("a", "FP32", [-1, 4]), ("b", "INT64", [-1])],
         [("y", "FP32", [-1, 2]), ("z", "INT64", [-1])]),
        # a Sequential model's output is named after its last layer
        ("sequential", "import (keras)",
         [("input_layer", "FP32", [-1, 4])], [("scores", "FP32", [-1, 2])]),
        # a dict of outputs: by key, each with its own layer's shape
        ("dict_outputs", "import (keras)",
         [("row", "FP32", [-1, 4])], [("first", "FP32", [-1, 2]), ("second", "FP32", [-1, 3])]),
    ],
)  # fmt: skip
def test_h5_and_saved_models_import_with_the_models_own_signature(
    built, name, source, inputs, outputs
):
    manifest = built["report"][name]
    assert "error" not in manifest, manifest
    assert manifest["source"] == source
    assert _tensors(manifest["signature"]["inputs"]) == inputs
    assert _tensors(manifest["signature"]["outputs"]) == outputs
    parity = manifest["parity"]
    assert [(r["batch_size"], r["reference"]) for r in parity] == [
        (1, "TensorFlow"),
        (3, "TensorFlow"),
    ]
    assert all(r["max_abs_error"] < 1e-4 for r in parity)


@pytest.mark.parametrize("name", ["lambda", "lambda_h5"])
def test_a_keras_lambda_layer_is_refused_not_run(built, name):
    error = built["report"][name]["error"]
    file = "lambda.keras" if name == "lambda" else "lambda.h5"
    assert f"Keras refuses to load {file} in safe mode: it has a Lambda layer" in error
    assert "never runs Python from a model file" in error
    assert not (built["store"] / name).exists()


def test_a_fixed_batch_dimension_is_refused(built):
    error = built["report"]["fixed"]["error"]
    assert "input 'x' has a fixed batch dimension (1 in (1, 4))" in error
    assert "save the model with None there" in error


def test_a_model_that_fails_on_random_indices_is_explained(built):
    error = built["report"]["embedding"]["error"]
    assert "embedding.keras: TensorFlow failed on random inputs of batch size 1" in error
    assert "integer inputs ['ids'] were drawn from [0, 10)" in error
    assert "\n" not in error and "\x1b" not in error  # one line, no terminal colours


def test_a_directory_must_be_a_saved_model(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(ArchiveError, match=r"not a TensorFlow SavedModel \(no saved_model.pb\)"):
        import_model(tmp_path / "weights", name="w", store=tmp_path / "store")


def test_a_name_is_asked_for_before_anything_is_converted(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # the name is checked first
    model = tmp_path / "classifier.keras"
    model.write_bytes(b"PK")
    with pytest.raises(ArchiveError, match=r"give the model a name \(--name\)"):
        import_model(model, store=tmp_path / "store")


def test_without_tensorflow_the_import_says_what_to_install(tmp_path, monkeypatch):
    model = tmp_path / "classifier.keras"
    model.write_bytes(b"PK")  # never read: TensorFlow is missing first
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    for name, value in {"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}.items():
        monkeypatch.setenv(name, value)  # what the importer sets, restored after the test
    with pytest.raises(ArchiveError) as info:
        import_model(model, name="k", store=tmp_path / "store")
    assert "pip install 'torchferry[tensorflow]'" in info.value.message
    assert "tensorflow is missing" in info.value.message


# -- served over every protocol ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server(built, start_server, tmp_path_factory):
    args = ["--store", str(built["store"]), "--threads", "1", "--log-level", "warning"]
    with start_server(args, tmp_path_factory.mktemp("logs") / "server.log") as server:
        yield server


def _case(built: dict[str, Any], name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    model, inputs, outputs = SERVED[name]
    expected = built["expected"]
    want = {served: expected[f"{model}/{tf}"] for served, tf in outputs.items()}
    return {n: expected[f"{model}/{n}"] for n in inputs}, want


def _v2_datatype(array: np.ndarray) -> str:
    return {"float32": "FP32", "int64": "INT64"}[array.dtype.name]


def _v2_json(server, name, inputs):
    body = {
        "inputs": [
            {
                "name": n,
                "shape": list(a.shape),
                "datatype": _v2_datatype(a),
                "data": a.ravel().tolist(),
            }
            for n, a in inputs.items()
        ]
    }
    with server.client() as http:
        answer = http.post(f"/v2/models/{name}/infer", json=body)
    assert answer.status_code == 200, answer.text
    return {o["name"]: np.reshape(o["data"], o["shape"]) for o in answer.json()["outputs"]}


def _v2_binary(server, name, inputs):
    client = httpclient.InferenceServerClient(url=urlparse(server.url).netloc)
    try:
        tensors = []
        for n, a in inputs.items():
            tensor = httpclient.InferInput(n, list(a.shape), _v2_datatype(a))
            tensor.set_data_from_numpy(a, binary_data=True)
            tensors.append(tensor)
        result = client.infer(name, tensors)
        return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}
    finally:
        client.close()


def _grpc(server, name, inputs):
    client = grpcclient.InferenceServerClient(url=server.grpc_target)
    try:
        tensors = []
        for n, a in inputs.items():
            tensor = grpcclient.InferInput(n, list(a.shape), _v2_datatype(a))
            tensor.set_data_from_numpy(a)
            tensors.append(tensor)
        result = client.infer(name, tensors)
        return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}
    finally:
        client.close()


def _rows(rows: list[Any], outputs: list[str]) -> dict[str, np.ndarray]:
    """Row answers (a row, or ``{output: row}`` for several outputs) as batched arrays."""
    if len(outputs) == 1:
        return {outputs[0]: np.asarray(rows)}
    return {o: np.asarray([row[o] for row in rows]) for o in outputs}


def _v1_instances(server, name, inputs):
    rows = [{n: a[i].tolist() for n, a in inputs.items()} for i in range(2)]
    with server.client() as http:
        answer = http.post(f"/v1/models/{name}:predict", json={"instances": rows})
    assert answer.status_code == 200, answer.text
    return _rows(answer.json()["predictions"], list(SERVED[name][2]))


def _torchserve(server, name, inputs):
    data = {n: a.tolist() for n, a in inputs.items()}
    with server.client() as http:
        answer = http.post(f"/predictions/{name}", json={"data": data})
    assert answer.status_code == 200, answer.text
    return _rows(answer.json(), list(SERVED[name][2]))


def _predict(server, name, inputs):
    data = {n: a.tolist() for n, a in inputs.items()}
    with server.client() as http:
        answer = http.post(f"/predict/{name}", json={"data": data})
    assert answer.status_code == 200, answer.text
    return _rows(answer.json()["result"], list(SERVED[name][2]))


PROTOCOLS = {
    "v2-json": _v2_json,
    "v2-binary": _v2_binary,
    "v2-grpc": _grpc,
    "v1-instances": _v1_instances,
    "torchserve": _torchserve,
    "predict": _predict,
}


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize("name", sorted(SERVED))
def test_served_over_every_protocol_as_tensorflow_answers(built, server, name, protocol):
    inputs, want = _case(built, name)
    got = PROTOCOLS[protocol](server, name, inputs)
    assert sorted(got) == sorted(want)
    for output, expected in want.items():
        np.testing.assert_allclose(got[output], expected, rtol=TOLERANCE, atol=TOLERANCE)
