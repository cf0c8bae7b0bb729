"""``torchferry bench`` against a real server over a digits model (the demo's interface, a
random ONNX graph: no training, no export, no torch, to stay fast): every protocol, the JSON
and HTML outputs, ``--raw``'s ratio, the calibration endpoints and the user's mistakes."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from torchferry.archive import HandlerSpec, Manifest, ModelStore
from torchferry.cli import bench_cmd, main
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
    # an extra header (gRPC metadata, as Ray Serve's proxy needs) is sent and not in the way
    code = bench(
        url, "--model", "digits", "--protocol", protocol, *FAST, "--no-calibrate",
        *raw, "--header", "Application=torchferry", "--json", str(out),
    )  # fmt: skip
    assert code == 0
    (step,) = json.loads(out.read_text())["steps"]
    assert step["ok"] > 0 and step["errors"] == {}
    assert step["ceiling"] is None
    if raw:
        assert step["ratio"] > 0


@pytest.mark.parametrize("protocol", ["v2-binary", "grpc"])
def test_open_loop_rates_against_the_server(server, protocol, tmp_path, capsys):
    # 1 s of load in all: two rates over HTTP, one over gRPC
    url = f"127.0.0.1:{server.grpc_port}" if protocol == "grpc" else server.url
    rates = [120] if protocol == "grpc" else [40, 120]
    out = tmp_path / "open.json"
    code = bench(
        url, "--model", "digits", "--protocol", protocol, "--rates", ",".join(map(str, rates)),
        "--duration", f"{1 / len(rates)}s", "--warmup", "0.1s", "--objective-ms", "2000",
        "--seed", "3", "--processes", "1", "--json", str(out),
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "open loop" in printed and "held up to 120/s" in printed
    report = json.loads(out.read_text())
    assert report["loop"] == "open" and report["settings"]["seed"] == 3
    assert report["command"][:3] == ["torchferry", "bench", url]
    assert report["highest_rate_holding_objective"] == 120
    for step, rate in zip(report["steps"], rates, strict=True):
        assert step["offered"] == rate and step["errors"] == {} and step["shed"] == 0
        # a Poisson count: well within 5 sd of its mean
        expected = rate / len(rates)
        assert abs(step["scheduled"] - expected) < 5 * expected**0.5 + 2
        assert step["ok"] == step["scheduled"] and step["holds_objective"]
        assert 0 < step["p50_ms"] <= step["p99_ms"] <= step["max_ms"]
        assert step["p99_all_ms"] == step["p99_ms"] and step["lag_p99_ms"] >= 0
        # the server's own batches in the step: none over its max_batch_size (32)
        assert step["mean_batch"] >= 1 and 1 <= step["max_batch"] <= 32


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
        (["{url}", "--model", "digits", "--rates", "9", "--concurrency", "2"], "not both"),
        (["{url}", "--model", "digits", "--rates", "9", "--raw", "{npz}"], "closed loop"),
        (["{url}", "--model", "digits", "--objective-ms", "5"], "give --rates too"),
        (["{url}", "--model", "digits", "--rates", "9", "--max-connections", "0"], "1 or more"),
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
    "args",
    [
        ["--duration", "10q"],
        ["--concurrency", "0"],
        ["--concurrency", "a,b"],
        ["--header", "novalue"],
        ["--header", "a b=1"],
        ["--rates", "0"],
        ["--rates", "fast"],
    ],
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


def test_calibration_responders_share_one_port_across_processes(pool):
    with trivial_endpoint(processes=2) as responder:
        answered = set()
        for _ in range(24):  # SO_REUSEPORT spreads connections by their address hash
            connection = http.client.HTTPConnection(responder.host, responder.port, timeout=5)
            connection.request("POST", "/", body=b"")
            answered.add(connection.getresponse().getheader("X-Responder"))
            connection.close()
        assert len(answered) == 2
    with trivial_endpoint(grpc=True, processes=2) as grpc:
        call = GrpcRequest("/inference.GRPCInferenceService/ModelInfer", b"\n\x01m")
        assert pool.start(grpc, call, 2, 0.1, 0.2).result().ok > 10


PREFIX = "/serve/tf"


class PrefixProxy(ThreadingHTTPServer):
    """A reverse proxy that answers only under ``PREFIX`` and only with ``X-Route: digits``
    (404 otherwise), as a gateway or Ray Serve's route prefix does. ``stats_faults``: what
    the n-th ``.../stats`` read gets after the first: ``ok``, ``drop`` (the connection
    closes unanswered), ``503``, ``list`` (a body that is not an object)."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = httpx.Client(base_url=upstream, timeout=30)
        self.paths: list[str] = []
        self.stats_faults: list[str] = []
        self.stats_reads = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{PREFIX}"


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: PrefixProxy

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.path.startswith(PREFIX + "/") or self.headers.get("X-Route") != "digits":
            self._answer(404, b"not here")
            return
        path = self.path[len(PREFIX) :]
        with self.server.lock:
            self.server.paths.append(path)
            if path.endswith("/stats"):
                fault = (["ok", *self.server.stats_faults] + ["ok"] * 99)[self.server.stats_reads]
                self.server.stats_reads += 1
            else:
                fault = "ok"
        if fault == "drop":
            self.close_connection = True
            return
        if fault in ("503", "list"):
            self._answer(503 if fault == "503" else 200, b"[]")
            return
        forwarded = {
            k: v
            for k, v in self.headers.items()
            if k.lower().startswith(("content-t", "inference-"))
        }
        answer = self.server.upstream.request(self.command, path, content=body, headers=forwarded)
        self._answer(
            answer.status_code,
            answer.content,
            {"Content-Type": answer.headers.get("content-type", "")},
        )

    do_GET = do_POST = _forward


@pytest.fixture(scope="module")
def proxy(server) -> Iterator[PrefixProxy]:
    gateway = PrefixProxy(server.url)
    thread = threading.Thread(target=gateway.serve_forever, daemon=True)
    thread.start()
    yield gateway
    gateway.shutdown()
    gateway.upstream.close()


def test_a_url_path_prefixes_every_request_with_the_headers(proxy, tmp_path):
    """/predict here; the V2 calls (metadata, infer, stats) go through the proxy in the
    next test."""
    out = tmp_path / "run.json"
    proxy.paths.clear()
    code = bench(
        proxy.url + "/", "--model", "digits", "--protocol", "predict", *FAST, "--no-calibrate",
        "--header", "X-Route=digits", "--json", str(out),
    )  # fmt: skip
    assert code == 0
    (step,) = json.loads(out.read_text())["steps"]
    assert step["ok"] > 0 and step["errors"] == {}
    assert {"/v2/models/digits", "/predict/digits"} <= set(proxy.paths)


def test_failed_statistics_reads_inside_steps_do_not_end_the_run(proxy, store, tmp_path):
    # reads after the first: step 1 before (dropped), after; step 2 before, after (503);
    # step 3 before, after (a list)
    proxy.stats_reads, proxy.stats_faults = 0, ["drop", "ok", "ok", "503", "ok", "list"]
    proxy.paths.clear()
    out = tmp_path / "run.json"
    code = bench(
        proxy.url, "--model", "digits", "--concurrency", "1,2,3", "--duration", "0.3s",
        "--warmup", "0.1s", "--no-calibrate", "--header", "X-Route=digits",
        "--raw", str(store), "--raw-duration", "0.1s", "--json", str(out),
    )  # fmt: skip
    assert code == 0
    assert {"/v2/models/digits", "/v2/models/digits/infer"} <= set(proxy.paths)
    report = json.loads(out.read_text())
    assert report["notes"] == [] and report["interrupted"] is None
    for step in report["steps"]:
        assert step["ok"] > 0 and step["ratio"] > 0
        assert step["batches"] is None
        assert step["raw_note"].startswith("no batch statistics this step; best of batch [1, 32]")


def test_an_interrupted_run_still_writes_the_steps_measured(server, tmp_path, capsys, monkeypatch):
    """Ctrl-C after the first of two steps: the files hold that step and say why."""
    printed = bench_cmd.console.print

    def print_then_interrupt(*args: object, **kwargs: object) -> None:
        printed(*args, **kwargs)
        if str(args[0]).startswith("  concurrency 1:"):
            raise KeyboardInterrupt

    monkeypatch.setattr(bench_cmd.console, "print", print_then_interrupt)
    out_json, out_html = tmp_path / "run.json", tmp_path / "run.html"
    code = bench(
        server.url, "--model", "digits", "--concurrency", "1,2", "--duration", "0.3s",
        "--warmup", "0.1s", "--no-calibrate", "--json", str(out_json), "--html", str(out_html),
    )  # fmt: skip
    assert code == 130
    report = json.loads(out_json.read_text())
    assert [s["concurrency"] for s in report["steps"]] == [1]
    assert report["interrupted"] == "interrupted (Ctrl-C)"
    assert "stopped after 1 of 2 steps" in report["notes"][0]
    assert "stopped after 1 of 2 steps" in out_html.read_text()
    err = capsys.readouterr().err
    assert "stopped after 1 of 2 steps" in err and str(out_json) in err
    assert "Traceback" not in err


def test_grpc_metadata_carries_the_headers_lowercased(server):
    from torchferry.loadtest.payloads import Payload, encode
    from torchferry.loadtest.target import Target

    target = Target.parse(
        f"127.0.0.1:{server.grpc_port}", "digits", None, None, True, (("Application", "tf"),)
    )
    request = encode("grpc", target, Payload(arrays={"pixels": np.ones((1, 64), np.float32)}), None)
    assert ("application", "tf") in request.metadata  # the server gets it: see above
