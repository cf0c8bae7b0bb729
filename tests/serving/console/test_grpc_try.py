"""The console's try-it over gRPC (``POST /console/api/try-grpc/{model}``) against one real
server (``--auth``, one worker): its answers equal tritonclient's gRPC client's for the same
tensors (every datatype through ``alltypes``, raw; FP32, INT64 and BYTES as typed contents),
and its refusals carry the HTTP status and gRPC code name of the fault."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from torchferry.archive import ModelStore
from torchferry.serving.auth.keyfile import create_token
from torchferry.serving.console.grpc_tensors import pack_raw, unpack_raw
from torchferry.serving.process import ServerProcess
from torchferry.serving.settings import KEY_FILE_DIR, KEY_FILE_NAME, ServerSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_proxy import call
from versions_store import WEIGHTS, write_lin

SCOPES = {"infer": ["infer"], "metadata": ["metadata"]}


@dataclass
class Served:
    server: ServerProcess
    tokens: dict[str, str]
    http: httpx.Client

    def try_grpc(
        self, model: str, body: Any, who: str | None = "infer", version: str | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        params = {"version": version} if version else {}
        url = f"{self.server.management_url}/console/api/try-grpc/{model}"
        return self.http.post(url, json=body, headers=headers, params=params)

    def triton(self, model: str, arrays: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        """What tritonclient's gRPC client answers for ``arrays``, each output flat."""
        client = grpcclient.InferenceServerClient(self.server.grpc_target)
        inputs = []
        for name, array in arrays.items():
            datatype = (
                "BYTES" if array.dtype == object else grpcclient.np_to_triton_dtype(array.dtype)
            )
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        headers = {"authorization": f"Bearer {self.tokens['infer']}"}
        result = client.infer(model, inputs, headers=headers)
        answer = result.get_response()
        flat = {o.name: result.as_numpy(o.name).reshape(-1).tolist() for o in answer.outputs}
        return {
            k: [v.decode() if isinstance(v, bytes) else v for v in vs] for k, vs in flat.items()
        }


@pytest.fixture(scope="module")
def served(
    model_store: ModelStore,
    start_server: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("grpc-try")
    store = root / "store"
    for name in ("alltypes", "strings", "multi"):
        shutil.copytree(model_store.root / name / "1", store / name / "1")
    write_lin(ModelStore(store), 1, WEIGHTS)
    key_file = store / KEY_FILE_DIR / KEY_FILE_NAME
    tokens = {
        who: create_token(key_file, scopes, timedelta(hours=1), who)[1]
        for who, scopes in SCOPES.items()
    }
    args = ["--store", str(store), "--auth", "--workers", "1", "--threads", "1"]
    args += ["--log-level", "warning"]
    with start_server(args, root / "server.log") as server, httpx.Client(timeout=30) as http:
        yield Served(server, tokens, http)


def _v2_inputs(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    inputs = []
    for name, array in arrays.items():
        datatype = "BYTES" if array.dtype == object else grpcclient.np_to_triton_dtype(array.dtype)
        data = [v.decode() for v in array.reshape(-1)] if datatype == "BYTES" else array.tolist()
        inputs.append(
            {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}
        )
    return inputs


def _check_same_as_tritonclient(
    served: Served, model: str, arrays: dict[str, np.ndarray]
) -> httpx.Response:
    answer = served.try_grpc(model, {"id": "t-1", "inputs": _v2_inputs(arrays)})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model_name"], body["model_version"], body["id"]) == (model, "1", "t-1")
    expected = served.triton(model, arrays)
    got = {o["name"]: o["data"] for o in body["outputs"]}
    assert got == expected
    return answer


def test_lin_answers_as_tritonclient_does(served: Served) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 3
    answer = _check_same_as_tritonclient(served, "lin", {"x": x})
    assert answer.headers["x-torchferry-grpc-status"] == "OK"
    assert answer.headers["x-model-version"] == "1"
    assert answer.headers["x-request-id"]
    assert float(answer.headers["x-torchferry-latency-ms"]) > 0
    output = answer.json()["outputs"][0]
    assert output["shape"] == [2, 3] and output["datatype"] == "FP32"


def test_int64_and_bytes_as_typed_contents(served: Served) -> None:
    a = np.array([[1.5, -2.0, 3.25]], dtype=np.float32)
    b = np.array([[7, -8, 2**40]], dtype=np.int64)
    _check_same_as_tritonclient(served, "multi", {"a": a, "b": b})
    text = np.array([b"h\xc3\xa9", b"ok"], dtype=object)
    _check_same_as_tritonclient(served, "strings", {"text": text})


def test_every_datatype_raw_with_fp16(served: Served) -> None:
    """FP16 has no typed field, so every input of this request travels raw."""
    arrays = {
        f"in_{t}": np.array([[1, 0]], dtype=grpcclient.triton_to_np_dtype(t)) for t in
        ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
    }  # fmt: skip
    arrays |= {
        "in_FP16": np.array([[0.5, -1.25]], np.float16),
        "in_FP32": np.array([[0.1, 2.0]], np.float32),
        "in_FP64": np.array([[0.1, -3.0]], np.float64),
        "in_BYTES": np.array([[b"a", b"bc"]], dtype=object),
    }
    arrays["in_BOOL"] = arrays["in_BOOL"].astype(bool)
    answer = _check_same_as_tritonclient(served, "alltypes", arrays)
    assert {o["datatype"] for o in answer.json()["outputs"]} >= {"FP16", "BOOL", "BYTES"}


def test_nested_data_and_a_version(served: Served) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [[1, 2, 3, 4]]}]}
    nested = served.try_grpc("lin", body, version="1")
    flat = served.triton("lin", {"x": np.array([[1, 2, 3, 4]], np.float32)})
    assert nested.status_code == 200 and nested.json()["outputs"][0]["data"] == flat["y"]
    missing = served.try_grpc("lin", body, version="9")
    assert missing.status_code == 404 and missing.json()["grpc_status"] == "NOT_FOUND"


def test_refusals(served: Served) -> None:
    short = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}]}
    answer = served.try_grpc("lin", short)
    assert answer.status_code == 400 and "'x'" in answer.json()["error"]
    assert "needs 4 elements" in answer.json()["error"]
    unknown = served.try_grpc("nope", {"inputs": [{**short["inputs"][0], "data": [1, 2, 3, 4]}]})
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["grpc_status"] == "NOT_FOUND"
    assert unknown.headers["x-torchferry-grpc-status"] == "NOT_FOUND"
    wrong = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    refused = served.try_grpc("lin", wrong)
    assert refused.status_code == 400 and refused.json()["grpc_status"] == "INVALID_ARGUMENT"
    assert served.try_grpc("lin", {"inputs": "x"}).status_code == 400
    url = f"{served.server.management_url}/console/api/try-grpc/lin"
    headers = {"Authorization": f"Bearer {served.tokens['infer']}"}
    not_json = served.http.post(url, content=b"{", headers=headers)
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]


def test_tokens(served: Served) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    metadata_only = served.try_grpc("lin", body, who="metadata")
    # refused by the console's guard, as the HTTP forwarder is, before any gRPC call
    assert metadata_only.status_code == 403, metadata_only.text
    assert "an infer scope" in metadata_only.json()["error"]
    anonymous = served.try_grpc("lin", body, who=None)
    assert anonymous.status_code == 401


def test_raw_round_trips() -> None:
    assert unpack_raw(pack_raw([1.0, -2.5], "BF16"), "BF16", 2) == [1.0, -2.5]
    assert unpack_raw(pack_raw(["é", ""], "BYTES"), "BYTES", 2) == ["é", ""]
    assert unpack_raw(pack_raw([0.5, 3.0], "FP16"), "FP16", 2) == [0.5, 3.0]


def test_no_plaintext_grpc_listener_is_a_501(tmp_path: Path) -> None:
    body = b'{"inputs": []}'
    off = call(ServerSettings(grpc_port=None), "/console/api/try-grpc/m", body)
    assert off.status_code == 501 and "no gRPC listener" in off.json()["error"]
    tls = ServerSettings.model_construct(tls_cert=tmp_path / "cert.pem", grpc_port=7070)
    refused = call(tls, "/console/api/try-grpc/m", body)
    assert refused.status_code == 501, refused.text
    assert "needs a plaintext gRPC listener" in refused.json()["error"]
    assert call(None, "/console/api/try-grpc/m", body).status_code == 501
