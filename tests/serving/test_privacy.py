"""No payload value, output value or token reaches a log line, a trace span, a metric, an
error message or the disk.

One server (a supervisor and its worker) runs at ``--log-level debug`` with JSON logs, the
access log, console traces (``OTEL_TRACES_EXPORTER=console``: spans go to the server's
output), metrics, and a shadow version that mirrors every routed request. It gets marked
values over every protocol (V2 JSON, V2 binary, gRPC, V1, ``/predict`` JSON and image
upload, TorchServe), with a bearer token and a traffic key on each request, in good
requests and in bad ones whose errors run every decoding path. Then everything it wrote is
searched for the marks: its output (logs and spans), ``/metrics``, its metrics files, every
error answer, the temp folder and the model store. Only a good answer's outputs may hold a
value, and only the model's own message (a 500) may quote one, to the client that sent it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import struct
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import numpy as np
import onnx
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, PngImagePlugin
from starlette.requests import Request
from tritonclient.utils import InferenceServerException

from torchferry.archive import BatchingSpec, Manifest, ModelStore
from torchferry.errors import ModelError
from torchferry.serving.process import ServerProcess, serve_in_subprocess
from torchferry.serving.protocols.payload import read_payload
from torchferry.serving.shadow import Shadows
from torchferry.serving.versionstats import VersionStats
from torchferry.signature import ModelSignature, TensorSpec

#: A float no answer of the adder model contains (it answers x * 3 + 1 and row sums).
FLOAT = 7391.2468
FLOAT_TEXT = "7391.24"
#: An index the lookup model refuses: ONNX Runtime's message quotes it.
INDEX = 987654321
TOKEN = "MARK-token-51c9e0"
TRAFFIC = "MARK-traffic-2d8e44"
#: BYTES the strings model echoes in a good answer (never anywhere else).
PAYLOAD = "MARK-payload-7f3a90"
#: What no artefact but a good answer's outputs may hold; bad requests carry ``MARK-bad-*``.
MARKS = ("MARK-", FLOAT_TEXT, str(INDEX))
BINARY_MARKS = (b"MARK-", FLOAT_TEXT.encode(), str(INDEX).encode(), struct.pack("<f", FLOAT))
HEADERS = {"Authorization": f"Bearer {TOKEN}", "X-Traffic-Key": TRAFFIC}
GRPC_METADATA = (("authorization", f"Bearer {TOKEN}"), ("x-traffic-key", TRAFFIC))


def _lookup_graph() -> onnx.ModelProto:
    """y = table[i]: a Gather whose out-of-range index ONNX Runtime quotes in its error."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "i"], ["y"])],
        "lookup",
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.zeros((3, 2), np.float32), "table")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)


def _write_lookup(store: ModelStore) -> None:
    signature = ModelSignature(
        inputs=(TensorSpec(name="i", datatype="INT64", shape=(-1,)),),
        outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 2)),),
    )
    manifest = Manifest(
        name="lookup",
        version=1,
        runtime="onnxruntime",
        graphs={"onnxruntime": "model.onnx"},
        signature=signature,
        batching=BatchingSpec(max_batch_size=8, max_delay_ms=1.0),
        source="tests",
    )
    store.write(manifest, lambda d: onnx.save(_lookup_graph(), str(d / "model.onnx")))


def _files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _marks_in(text: str) -> list[str]:
    return [mark for mark in MARKS if mark in text]


def _png(pixels: int, text: str | None = None) -> bytes:
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text("Comment", text)
    image = Image.fromarray(np.full((8, 8), pixels, np.uint8), mode="L")
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _png_with_chunk(kind: bytes) -> bytes:
    """A PNG with an unknown chunk named ``kind`` before its pixels (Pillow names it at DEBUG)."""
    good = _png(3)
    head = good[:33]  # the signature and the IHDR chunk
    return head + struct.pack(">I", 4) + kind + b"abcd" + b"\0\0\0\0" + good[33:]


class Served:
    """The server, its folders, and every error body it answered."""

    def __init__(self, server: ServerProcess, store: Path, temp: Path, before: dict) -> None:
        self.server = server
        self.store = store
        self.temp = temp
        self.store_before = before
        self.errors: list[str] = []
        self.http = httpx.Client(base_url=server.url, timeout=30, headers=HEADERS)

    def bad(self, method: str, path: str, status: int = 400, **kwargs: Any) -> str:
        """Send a request that must fail with ``status``; keep its body to search."""
        answer = self.http.request(method, path, **kwargs)
        assert answer.status_code == status, (path, answer.status_code, answer.text)
        self.errors.append(answer.text)
        return answer.text


@pytest.fixture(scope="module")
def served(model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("privacy")
    store_dir, temp = root / "store", root / "tmp"
    temp.mkdir()
    for name in ("adder", "strings", "tiny_image"):
        shutil.copytree(model_store.root / name, store_dir / name)
    _write_lookup(ModelStore(store_dir))
    before = _files(store_dir)
    args = [
        "--store", str(store_dir), "--threads", "1", "--log-level", "debug",
        "--log-format", "json", "--drain-timeout", "1",
    ]  # fmt: skip
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100", "TMPDIR": str(temp)}
    with serve_in_subprocess(args, root / "server.log", env=env) as server:
        management = httpx.Client(base_url=server.management_url, timeout=30)
        # every routed adder request is mirrored to version 1 (the default answers with 2)
        shadow = management.put("/models/adder/shadow", json={"version": 1, "share": 1.0})
        assert shadow.is_success, shadow.text
        served = Served(server, store_dir, temp, before)
        yield served
        served.http.close()
        management.close()
    # the workers' metrics files go with the server: nothing of the run stays behind but
    # ONNX Runtime's session marker (a time and a random id)
    left = _files(temp)
    assert {p.name for p in left} <= {".ses"}, left
    assert all(len(content) < 100 and b"MARK" not in content for content in left.values())


# -- good requests: every protocol, marked values, a token and a traffic key -----------------------


def test_good_requests_over_every_protocol_answer(served):
    http, server = served.http, served.server
    x = np.full((2, 4), FLOAT, np.float32)
    v2 = {
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    answer = http.post("/v2/models/adder/infer", json=v2)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"][0] == pytest.approx(FLOAT * 3 + 1)
    text = {"name": "text", "shape": [1], "datatype": "BYTES", "data": [PAYLOAD]}
    echoed = http.post("/v2/models/strings/infer", json={"inputs": [text]})
    assert echoed.status_code == 200 and PAYLOAD in echoed.text

    # V2 binary tensors, through tritonclient's HTTP client (its binary default)
    triton = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    tensor = httpclient.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(x)
    result = triton.infer("adder", [tensor], headers=HEADERS)
    np.testing.assert_allclose(result.as_numpy("total"), x.sum(axis=1))
    triton.close()

    # gRPC, through tritonclient's gRPC client, with the token and key as metadata
    client = grpcclient.InferenceServerClient(url=server.grpc_target)
    tensor = grpcclient.InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("adder", [tensor], headers=dict(GRPC_METADATA))
    np.testing.assert_allclose(result.as_numpy("total"), x.sum(axis=1))
    words = grpcclient.InferInput("text", [1], "BYTES")
    words.set_data_from_numpy(np.array([PAYLOAD.encode()], dtype=object))
    assert client.infer("strings", [words]).as_numpy("same")[0] == PAYLOAD.encode()
    client.close()

    v1 = http.post("/v1/models/adder:predict", json={"instances": x.tolist()})
    assert v1.status_code == 200, v1.text
    predicted = http.post("/predict/adder", json={"data": x.tolist()})
    assert predicted.status_code == 200, predicted.text
    image = _png(200, text=f"MARK-image-{PAYLOAD}")
    upload = http.post("/predict/tiny_image", files={"file": ("a.png", image, "image/png")})
    assert upload.status_code == 200, upload.text
    assert http.put("/predictions/tiny_image", content=image).status_code == 200
    torchserve = http.post("/predictions/adder", json=x.tolist())
    assert torchserve.status_code == 200, torchserve.text


# -- bad requests: each error names shapes and dtypes, never a value --------------------------------


def _v2(tensor: dict[str, Any], **request: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", **tensor}], **request}


def test_v2_json_errors_quote_no_value(served):
    infer = "/v2/models/adder/infer"
    row = [FLOAT] * 4
    cases = [
        _v2({"data": ["MARK-bad-string", FLOAT, FLOAT, FLOAT]}),
        _v2({"shape": [2, 2, 2], "data": row * 2}),
        _v2({"shape": ["MARK-bad-shape", 4], "data": row}),
        _v2({"shape": [1, 4], "data": {"MARK-bad-key": row}}),
        _v2({"datatype": "MARK-bad-datatype", "data": row}),
        _v2({"data": row}, parameters={"binary_data_output": "MARK-bad-flag"}),
        _v2({"data": row}, parameters={"timeout": "MARK-bad-timeout"}),
        _v2({"data": row}, parameters={"traffic_key": ["MARK-bad-key"]}),
        _v2({"data": row, "parameters": {"binary_data_size": "MARK-bad-size"}}),
    ]
    for body in cases:
        served.bad("POST", infer, json=body)
    too_large = {"name": "i", "shape": [1], "datatype": "INT64", "data": [98765432109876543210987]}
    served.bad("POST", "/v2/models/lookup/infer", json={"inputs": [too_large]})
    for document in (b'{"inputs": [MARK-bad-json', b'{"inputs": "MARK-bad-\xff"}'):
        served.bad("POST", infer, content=document)
    served.bad(
        "POST",
        "/v2/models/alltypes/infer",
        status=404,
        json=_v2({"data": ["MARK-bad-unknown-model"]}),
    )


def test_v2_binary_errors_quote_no_value(served):
    infer = "/v2/models/adder/infer"
    header = orjson.dumps(_v2({"parameters": {"binary_data_size": 16}}))
    data = np.full(4, FLOAT, np.float32).tobytes()
    served.bad(
        "POST",
        infer,
        content=header + data,
        headers={"Inference-Header-Content-Length": "MARK-bad-length"},
    )
    served.bad(
        "POST",
        infer,
        content=header + data + b"MARK-bad-trailing",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    wrong = orjson.dumps(_v2({"datatype": "FP64", "parameters": {"binary_data_size": 16}}))
    served.bad(
        "POST",
        infer,
        content=wrong + data,
        headers={"Inference-Header-Content-Length": str(len(wrong))},
    )
    # Triton's raw binary request: the whole body is the input, of a size it cannot fill
    served.bad(
        "POST",
        infer,
        content=b"MARK-bad-raw",
        headers={"Inference-Header-Content-Length": "0"},
    )


def test_grpc_errors_quote_no_value(served):
    client = grpcclient.InferenceServerClient(url=served.server.grpc_target)
    x = np.full((1, 4), FLOAT, np.float32)
    wrong_type = grpcclient.InferInput("x", [1, 4], "FP64")
    wrong_type.set_data_from_numpy(x.astype(np.float64))
    words = grpcclient.InferInput("x", [1, 4], "BYTES")
    words.set_data_from_numpy(np.array([[b"MARK-bad-grpc"] * 4], dtype=object))
    wrong_shape = grpcclient.InferInput("x", [2, 2], "FP32")
    wrong_shape.set_data_from_numpy(x.reshape(2, 2))
    for tensor in (wrong_type, words, wrong_shape):
        with pytest.raises(InferenceServerException) as failed:
            client.infer("adder", [tensor], headers=dict(GRPC_METADATA))
        assert failed.value.status() == "StatusCode.INVALID_ARGUMENT"
        served.errors.append(str(failed.value))
    client.close()
    # a body that is no protobuf at all: grpc refuses it before the servicer sees it
    with grpc.insecure_channel(served.server.grpc_target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as refused:
            call(b"\xff\xffMARK-bad-protobuf", metadata=GRPC_METADATA, timeout=10)
        served.errors.append(str(refused.value.details()))


def test_v1_predict_and_torchserve_errors_quote_no_value(served):
    row = [FLOAT] * 4
    served.bad("POST", "/v1/models/adder:predict", json={"instances": [["MARK-bad-v1", *row[1:]]]})
    served.bad("POST", "/v1/models/adder:predict", json={"inputs": {"x": [[FLOAT, None, 1, 2]]}})
    served.bad("POST", "/v1/models/adder:predict", json={"instances": [row[:3]]})
    served.bad("POST", "/v1/models/strings:predict", json={"instances": [{"b64": "MARK-bad-b64!"}]})
    served.bad("POST", "/v1/models/adder:predict", content=b'{"instances": [[MARK-bad-v1-json')
    served.bad("POST", "/predict/adder", json={"data": [["MARK-bad-predict", *row[1:]]]})
    served.bad("POST", "/predict/adder", json={"MARK-bad-predict-key": [row]})
    served.bad(
        "POST",
        "/predict/adder",
        status=415,
        content=b"[[1, 2, 3, 4]]",
        headers={"content-type": "text/MARK-bad-media; charset=MARK-bad-charset"},
    )
    for blob in (b"\x89PNG\r\n\x1a\nMARK-bad-image", _png_with_chunk(b"MARK")):
        served.bad(
            "POST", "/predict/tiny_image", content=blob, headers={"content-type": "image/png"}
        )
        served.bad("POST", "/predict/tiny_image", files={"file": ("a.png", blob, "image/png")})
    part = b'--xx\r\nContent-Disposition: form-data; name="file"\r\n\r\nMARK-bad-part\r\n--xx--'
    for broken in (b"MARK-bad-preamble" + part, b"--xx\r\nMARK-bad-header\r\n\r\n" + part):
        served.bad(
            "POST",
            "/predict/tiny_image",
            content=broken,
            headers={"content-type": "multipart/form-data; boundary=xx"},
        )
    served.bad("PUT", "/predictions/adder", json=[["MARK-bad-torchserve", *row[1:]]])
    served.bad("POST", "/predictions/tiny_image", json={"data": "MARK-bad-torchserve-b64!"})
    served.bad("POST", "/predictions/adder", content=b"[[MARK-bad-torchserve-json")


def test_a_model_error_quotes_its_value_to_the_client_only(served):
    """ONNX Runtime's message names the index it refused: the client that sent it sees it in
    the 500's message (the model's message), and no log line does (checked below)."""
    body = {"inputs": [{"name": "i", "shape": [1], "datatype": "INT64", "data": [INDEX]}]}
    answer = served.http.post("/v2/models/lookup/infer", json=body)
    assert answer.status_code == 500 and "model 'lookup:1' failed" in answer.json()["error"]


def test_error_answers_name_shapes_and_dtypes_but_no_value(served):
    assert len(served.errors) >= 30
    leaks = [(body, _marks_in(body)) for body in served.errors if _marks_in(body)]
    assert leaks == [], "\n".join(body for body, _ in leaks)
    shape_error = next(body for body in served.errors if "[2, 2, 2]" in body)
    assert "input 'x'" in shape_error and "[-1, 4]" in shape_error


# -- everything the server wrote --------------------------------------------------------------------


def _spans(log: Path) -> int:
    return log.read_text(errors="replace").count('"kind": "SpanKind.SERVER"')


def test_nothing_written_holds_a_value_or_a_token(served):
    server = served.server
    deadline = time.monotonic() + 15
    while _spans(server.log) < 20:  # the console exporter writes every 0.1 s
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.1)
    time.sleep(0.5)  # the last metrics flush (0.2 s) and span batch
    metrics = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    assert "nv_inference_request_success" in metrics
    assert "torchferry_shadow_rows_total" in metrics  # the shadow compared mirrored requests
    # the shadow's largest difference is a figure of two versions' outputs, by design (here
    # |x * 3 - x * 2|, the input itself): the one sample that may show a value's size
    shown = [
        line
        for line in metrics.splitlines()
        if _marks_in(line) and not line.startswith("torchferry_shadow_max_abs_diff{")
    ]
    assert shown == [], shown
    # the workers' metrics files live in the temp folder while they serve
    written = _files(served.temp)
    assert written, "no metrics files under TMPDIR"
    for path, content in written.items():
        assert [m for m in BINARY_MARKS if m in content] == [], path

    output = server.log.read_text(errors="replace")
    leaking = [line for line in output.splitlines() if _marks_in(line) or "Bearer" in line]
    assert leaking == [], "\n".join(leaking)
    lines = [orjson.loads(line) for line in output.splitlines() if line.startswith('{"time"')]
    levels = {line["level"] for line in lines}
    assert "DEBUG" in levels, "the server did not log at debug level"
    loggers = {line["logger"] for line in lines}
    assert "torchferry.access" in loggers
    # Pillow's debug lines name an image's chunks, python-multipart's warnings its bytes
    assert not {n for n in loggers if n.startswith(("PIL", "python_multipart", "multipart"))}

    # the store holds the models and the desired state (the shadow's route), nothing else
    after = _files(served.store)
    added = sorted(str(p.relative_to(served.store)) for p in after.keys() - served.store_before)
    assert all(name.startswith(".torchferry") for name in added), added
    for path, content in after.items():
        assert [m for m in BINARY_MARKS if m in content] == [], path


# -- shadow comparisons: figures in memory, nothing else kept ---------------------------------------


class _Shadow:
    """Enough of a shadow version for ``Shadows.mirror``, with real statistics; its batcher
    answers its input times ``answer``, or with None fails as a model does."""

    name, version, retired, inflight = "lin", 2, False, 0

    def __init__(self, answer: Any) -> None:
        self.stats = VersionStats()
        self.signature = SimpleNamespace(output_names=["y"])
        self.batcher = SimpleNamespace(submit=self._submit)
        self.answer = answer

    async def _submit(self, inputs: dict[str, np.ndarray], timeout: Any) -> Any:
        if self.answer is None:
            raise ModelError(f"model failed: {PAYLOAD}", log_message="model failed")
        return {"y": inputs["x"] * self.answer}


def test_a_shadow_comparison_keeps_figures_only(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG, logger="torchferry.shadow")

    async def mirror(shadow: _Shadow) -> tuple[weakref.ref, weakref.ref]:
        shadows = Shadows(metrics_on=False, timeout_s=None)
        inputs = {"x": np.full((3, 4), FLOAT, np.float32)}
        outputs = {"y": inputs["x"] * 2}
        shadows.mirror(shadow, shadow, inputs, outputs)  # type: ignore[arg-type]
        await shadows.close(5.0)
        assert shadows._in_flight == {"lin": 0} and not shadows._tasks
        return weakref.ref(inputs["x"]), weakref.ref(outputs["y"])

    twin = _Shadow(2.0)
    kept = asyncio.run(mirror(twin))
    # the mirrored rows and the primary's answer are gone once compared: only figures stay
    assert [ref() for ref in kept] == [None, None]
    assert (twin.stats.compared, twin.stats.agreed, twin.stats.max_abs_diff) == (3, 3, 0.0)
    assert twin.inflight == 0

    failing = _Shadow(None)
    kept = asyncio.run(mirror(failing))
    assert [ref() for ref in kept] == [None, None] and failing.stats.compared == 0
    assert "model failed" in caplog.text and _marks_in(caplog.text) == []
    assert list(tmp_path.iterdir()) == []  # nothing written


# -- the payload routes' request: in memory, without credentials ------------------------------------


def test_an_upload_stays_in_memory_and_the_handler_never_sees_the_token(monkeypatch):
    def no_disk(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an upload was spooled to a temporary file")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_disk)
    blob = bytes(range(256)) * 8192  # 2 MiB: Starlette spools past 1 MiB
    boundary = "privacy-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + blob
        + f"\r\n--{boundary}--\r\n".encode()
    )
    settings = SimpleNamespace(max_body_bytes=4 * len(blob))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "query_string": b"",
        "app": SimpleNamespace(state=SimpleNamespace(settings=settings)),
        "headers": [
            (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
            (b"authorization", f"Bearer {TOKEN}".encode()),
            (b"x-traffic-key", TRAFFIC.encode()),
        ],
    }
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    payload = asyncio.run(read_payload(Request(scope, receive), "predict"))
    assert payload.files == {"file": [blob]}
    assert "authorization" not in payload.headers and payload.headers["x-traffic-key"] == TRAFFIC
