"""``torchferry bench`` against a real server over a digits model (the demo's interface, a
random ONNX graph: no training, no export, no torch, to stay fast): every protocol, the JSON
and HTML outputs, ``--raw``'s ratio, the calibration endpoints and the user's mistakes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from torchferry.archive import HandlerSpec, Manifest, ModelStore
from torchferry.cli import main
from torchferry.loadtest.calibrate import trivial_endpoint
from torchferry.loadtest.generator import GrpcRequest, HttpRequest
from torchferry.loadtest.pool import GeneratorPool
from torchferry.serving.process import ServerProcess, serve_in_subprocess
from torchferry.signature import ModelSignature, TensorSpec

FAST = ["--duration", "0.5s", "--warmup", "0.2s", "--concurrency", "2"]


def write_digits(root: Path) -> Path:
    """A model with the demo ``digits`` model's interface (``pixels`` FP32 [-1, 64] in,
    ``probabilities`` [-1, 10] out, the tensor handler with top-3 labels): a random linear
    layer and a softmax, as ONNX, so that neither the server nor this test loads torch."""
    weights = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32) / 16
    graph = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("MatMul", ["pixels", "w"], ["logits"]),
                helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
            ],
            "digits",
            [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 64])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
            [numpy_helper.from_array(weights, "w")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    manifest = Manifest(
        name="digits",
        version=1,
        runtime="onnxruntime",
        graphs={"onnxruntime": "model.onnx"},
        signature=ModelSignature(
            inputs=(TensorSpec(name="pixels", datatype="FP32", shape=(-1, 64)),),
            outputs=(TensorSpec(name="probabilities", datatype="FP32", shape=(-1, 10)),),
        ),
        handler=HandlerSpec(name="tensor", config={"top_k": 3, "labels": "labels.json"}),
        source="tests",
    )

    def populate(directory: Path) -> None:
        onnx.save(graph, str(directory / "model.onnx"))
        (directory / "labels.json").write_text(json.dumps([str(d) for d in range(10)]))

    ModelStore(root).write(manifest, populate)
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits(tmp_path_factory.mktemp("bench") / "models")


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[ServerProcess]:
    args = ["--store", str(store), "--threads", "1", "--log-level", "warning"]
    with serve_in_subprocess(args) as process:
        yield process


def bench(*args: str) -> int:
    return main(["bench", *args])


def test_v2_json_with_raw_writes_every_figure(server, store, tmp_path, capsys):
    out_json, out_html = tmp_path / "run.json", tmp_path / "run.html"
    code = bench(
        server.url, "--model", "digits", "--concurrency", "1,4", "--duration", "0.5s",
        "--warmup", "0.3s", "--raw", str(store), "--raw-duration", "0.2s",
        "--json", str(out_json), "--html", str(out_html),
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "digits over v2-json" in printed and "served" in printed
    report = json.loads(out_json.read_text())
    assert report["protocol"] == "v2-json" and report["payload"] == "pixels FP32[1, 64]"
    assert report["command"][:3] == ["torchferry", "bench", server.url]
    assert {"cpu", "python", "onnxruntime"} <= set(report["machine"])
    assert [s["concurrency"] for s in report["steps"]] == [1, 4]
    for step in report["steps"]:
        assert step["ok"] > 0 and step["errors"] == {}
        assert step["throughput"] > 0
        assert 0 < step["p50_ms"] <= step["p90_ms"] <= step["p99_ms"] <= step["max_ms"]
        assert step["ceiling"] > 0  # the calibration ran at this concurrency
        assert step["batches"] and all(int(size) >= 1 for size in step["batches"])
        assert step["raw_rows_per_s"] > 0 and step["ratio"] > 0
    assert report["calibration"]["ceilings"]["1"] > 0
    assert report["raw_rows_per_s_by_batch"]["1"] > 0
    page = out_html.read_text()
    assert "<svg" in page and "polyline" in page and "c=4" in page
    assert "<script" not in page


@pytest.mark.parametrize("protocol", ["v2-binary", "grpc", "predict", "torchserve"])
def test_each_protocol_is_answered(server, store, protocol, tmp_path):
    url = f"127.0.0.1:{server.grpc_port}" if protocol == "grpc" else server.url
    out = tmp_path / "run.json"
    # the payload routes' raw side runs the archive's handler as the server does
    raw = ["--raw", str(store), "--raw-duration", "0.1s"] if protocol == "predict" else []
    code = bench(
        url, "--model", "digits", "--protocol", protocol, *FAST, "--no-calibrate",
        *raw, "--json", str(out),
    )  # fmt: skip
    assert code == 0
    (step,) = json.loads(out.read_text())["steps"]
    assert step["ok"] > 0 and step["errors"] == {}
    assert step["ceiling"] is None
    if raw:
        assert step["ratio"] > 0


def test_npz_input_and_failures_by_status(server, tmp_path):
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    np.savez(good, pixels=np.ones((3, 64), np.float32))
    np.savez(bad, pixels=np.ones((1, 5), np.float32))  # the server answers 400
    out = tmp_path / "run.json"
    assert bench(server.url, "--model", "digits", "--input", str(good), *FAST, "--no-calibrate",
                 "--json", str(out)) == 0  # fmt: skip
    report = json.loads(out.read_text())
    assert report["rows_per_request"] == 3
    step = report["steps"][0]
    assert step["rows_per_s"] == pytest.approx(3 * step["throughput"])
    assert bench(server.url, "--model", "digits", "--input", str(bad), *FAST, "--no-calibrate",
                 "--json", str(out)) == 0  # fmt: skip
    step = json.loads(out.read_text())["steps"][0]
    assert step["ok"] == 0 and step["errors"]["400"] > 0


@pytest.fixture(scope="module")
def pool() -> Iterator[GeneratorPool]:
    with GeneratorPool(1) as generators:
        yield generators


def test_calibration_endpoints_answer_the_generator(pool):
    with trivial_endpoint() as http:
        request = HttpRequest("/v2/models/m/infer", b"x" * 300, "application/json")
        result = pool.start(http, request, 4, 0.1, 0.3).result()
        assert result.ok > 50 and not result.errors
    with trivial_endpoint(grpc=True) as grpc:
        call = GrpcRequest("/inference.GRPCInferenceService/ModelInfer", b"\n\x01m")
        result = pool.start(grpc, call, 4, 0.1, 0.3).result()
        assert result.ok > 10 and not result.errors


def test_connection_errors_are_counted(pool):
    with trivial_endpoint() as http:
        pass  # the responder has gone: its port now refuses
    request = HttpRequest("/", b"", "application/json")
    result = pool.start(http, request, 2, 0.0, 0.3).result()
    assert result.ok == 0 and result.errors["connection"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["http://127.0.0.1:1", "--model", "digits"], "cannot reach http://127.0.0.1:1"),
        (["{url}", "--model", "nope"], "has no model 'nope'"),
        (["{grpc}", "--model", "nope", "--protocol", "grpc"], "has no model 'nope'"),
        (["{url}", "--model", "digits", "--input", "{npz}"], "do not match the model's inputs"),
        (["{url}", "--model", "digits", "--input", "/no/such.npz"], "no such file"),
        (["{url}", "--model", "digits", "--image", "{npz}"], "BYTES in JSON must be text"),
        (["{url}", "--model", "digits", "--raw", "/no/store"], "not a model store"),
        (["ftp://x", "--model", "digits"], "expected http://HOST:PORT"),
    ],
)
def test_mistakes_end_in_one_line_and_exit_2(server, tmp_path, capsys, args, message):
    npz = tmp_path / "wrong.npz"
    np.savez(npz, x=np.zeros((1, 64), np.float32))
    grpc = f"127.0.0.1:{server.grpc_port}"
    filled = [a.format(url=server.url, grpc=grpc, npz=npz) for a in args]
    assert bench(*filled) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args", [["--duration", "10q"], ["--concurrency", "0"], ["--concurrency", "a,b"]]
)
def test_bad_options_are_usage_errors(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench("http://127.0.0.1:1", "--model", "digits", *args)
    assert exit_info.value.code == 2
    assert "is not a" in capsys.readouterr().err


def test_a_server_without_v2_extensions_gets_a_note_and_fallback_raw(store, tmp_path, capsys):
    """Nothing torchferry-specific is needed: a bare HTTP server that answers 200 to
    everything (no metadata, no statistics) is benched, and --raw says why it measured
    batch 1 and the max batch instead of the server's batches."""
    npz, out = tmp_path / "in.npz", tmp_path / "run.json"
    np.savez(npz, pixels=np.zeros((1, 64), np.float32))
    with trivial_endpoint() as bare:
        code = bench(
            f"http://127.0.0.1:{bare.port}", "--model", "digits", "--protocol", "predict",
            "--input", str(npz), *FAST, "--no-calibrate", "--raw", str(store),
            "--raw-duration", "0.1s", "--json", str(out),
        )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert "no V2 batch statistics" in report["notes"][0]
    assert sorted(report["raw_rows_per_s_by_batch"]) == ["1", "32"]
    (step,) = report["steps"]
    assert step["batches"] is None and step["ratio"] > 0
    assert "no V2 batch statistics" in capsys.readouterr().out
