"""``torchferry serve --workers 2 --log-format json``: the supervisor's ``/metrics`` (on
``--metrics-port``) sums both workers' counters to exactly the requests sent, and every line
logged is one JSON object: load events, uvicorn's lines, one access line per request from
either worker, and no payload value anywhere."""

from __future__ import annotations

import time

import grpc
import httpx
import numpy as np
import orjson

from torchferry.serving.metrics_render import parse_metrics, sample_value
from torchferry.serving.protos import inference_pb2 as pb
from torchferry.serving.protos.inference_pb2_grpc import GRPCInferenceServiceStub

#: a value no log line or metric may ever show
SECRET = 4242.125


REQUESTS = 40


def test_two_workers_count_every_request_once_and_log_json(model_store, tmp_path, start_server):
    args = [
        "--store", str(model_store.root), "--model", "adder", "--workers", "2",
        "--log-format", "json", "--log-level", "info",
    ]  # fmt: skip
    log = tmp_path / "server.log"
    x = np.full((2, 4), SECRET, np.float32)
    tensor = {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": x.ravel().tolist()}
    with start_server(args, log) as server:
        # a new connection per request: the kernel spreads them over both workers
        for i in range(REQUESTS):
            answer = httpx.post(
                f"{server.url}/v2/models/adder/infer",
                json={"inputs": [tensor]},
                headers={"X-Request-ID": f"mp-{i}"},
            )
            assert answer.status_code == 200, answer.text
        one = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = GRPCInferenceServiceStub(channel)
            for i in range(2):
                request = pb.ModelInferRequest(
                    model_name="adder", inputs=[one], raw_input_contents=[x[:1].tobytes()]
                )
                stub.ModelInfer(request, metadata=(("x-request-id", f"mp-grpc-{i}"),), timeout=30)
        bad = {"inputs": [{**tensor, "shape": [2, 2, 2]}]}
        assert httpx.post(f"{server.url}/v2/models/adder/infer", json=bad).status_code == 400

        def scrape_text() -> str:
            page = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
            assert page.status_code == 200
            return page.text

        def scrape() -> list:
            return parse_metrics(scrape_text())

        def arrived(samples: list) -> bool:
            """Each worker writes its numbers within 0.2 s: wait for both workers' last."""
            failures = sample_value(samples, "nv_inference_request_failure")
            return failures >= 1 and sample_value(samples, "nv_inference_count") >= REQUESTS * 2 + 2

        deadline = time.monotonic() + 10
        while not arrived(scrape()):
            assert time.monotonic() < deadline, "the workers' metrics did not arrive"
            time.sleep(0.05)
        time.sleep(0.5)  # anything counted twice would show by now
        samples = scrape()
        assert (
            sample_value(samples, "nv_inference_request_success", model="adder", version="2")
            == REQUESTS + 2
        )
        assert (
            sample_value(samples, "nv_inference_request_success", model="adder", version="1") == 0
        )
        assert sample_value(samples, "nv_inference_request_failure", model="adder") == 1
        assert sample_value(samples, "nv_inference_count", model="adder") == REQUESTS * 2 + 2
        # one by one: a batch per request
        assert sample_value(samples, "nv_inference_exec_count", model="adder") == REQUESTS + 2
        assert sample_value(samples, "nv_inference_pending_request_count", model="adder") == 0
        for worker in ("1", "2"):
            assert sample_value(samples, "process_resident_memory_bytes", worker=worker) > 1e7
        assert sample_value(samples, "torchferry_workers", state="serving") == 2
        grpc_latencies = sample_value(
            samples, "torchferry_request_duration_seconds_count", protocol="v2-grpc", status="OK"
        )
        assert grpc_latencies == 2
        assert "4242" not in scrape_text()

    text = log.read_text()
    assert "4242" not in text
    lines = [orjson.loads(line) for line in text.splitlines()]  # every line, JSON
    events = {(e.get("event"), e.get("model"), e.get("version")) for e in lines}
    assert {("model_loaded", "adder", "1"), ("model_loaded", "adder", "2")} <= events
    assert ("model_unloaded", "adder", "2") in events
    loaded = next(e for e in lines if e.get("event") == "model_loaded")
    assert loaded["runtime"] == "onnxruntime" and loaded["load_seconds"] >= 0
    assert any(e["logger"] == "uvicorn.error" for e in lines)
    assert not any("color_message" in e for e in lines)  # uvicorn's ANSI copy of a message
    access = {e["request_id"]: e for e in lines if e["logger"] == "torchferry.access"}
    assert len({e["pid"] for e in access.values()}) == 2, "one worker served every request"
    for i in range(REQUESTS):
        line = access[f"mp-{i}"]
        assert (line["protocol"], line["route"], line["status"], line["model"]) == (
            "v2", "/v2/models/{model_name}/infer", "200", "adder",
        )  # fmt: skip
        assert (line["version"], line["rows"], line["batch_size"]) == ("2", 2, 2)
    assert access["mp-grpc-0"]["route"] == "ModelInfer" and access["mp-grpc-1"]["status"] == "OK"
    failed = [
        e["status"] for e in access.values() if e.get("model") and e["status"] not in ("200", "OK")
    ]
    assert failed == ["400"]
