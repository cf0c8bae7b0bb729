"""A handler written outside the package, served end to end over ``/predict`` and TorchServe's
``/predictions``: refused without ``--trust-code``, and with it every one of 64 concurrent
requests of different sizes, merged into shared batches, gets its own answer and state."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import torchferry
from torchferry.archive import BatchingSpec

HANDLER = textwrap.dedent(
    '''
    import json

    import numpy as np

    from torchferry import Handler, InvalidInput


    class Scaler(Handler):
        """Rows arrive as {"rows": [[...]], "tag": ...}; the answer names the request."""

        def setup(self, ctx):
            with open(ctx.files["scale.json"]) as f:
                self.scale = float(json.load(f)["scale"])

        def preprocess(self, request):
            body = request.json
            if not isinstance(body, dict) or "rows" not in body:
                raise InvalidInput('send {"rows": [[...]], "tag": "..."}')
            dtype = np.float64 if body.get("tag") == "wrong dtype" else np.float32
            x = np.asarray(body["rows"], dtype=dtype) * self.scale
            return {"x": x}, {"tag": body.get("tag"), "rows": len(x), "route": request.route}

        def postprocess(self, outputs, state):
            return {**state, "y": outputs["y"].tolist()}
    '''
)


def model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Linear(4, 3).eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    outside = tmp_path_factory.mktemp("user_code")  # not on sys.path, not in the package
    (outside / "scaler.py").write_text(HANDLER)
    (outside / "scale.json").write_text('{"scale": 2.0}')
    root = tmp_path_factory.mktemp("store")
    torchferry.export(
        model(),
        torch.zeros(1, 4),
        name="scaled",
        store=root,
        format="onnx",
        input_names=["x"],
        output_names=["y"],
        handler=f"{outside / 'scaler.py'}:Scaler",
        extra_files=[outside / "scale.json"],
        batching=BatchingSpec(max_batch_size=256, max_delay_ms=30),
    )
    return root


def test_serving_without_trust_is_refused_naming_the_flag(store, tmp_path):
    command = [sys.executable, "-m", "torchferry.cli", "serve", "--store", str(store)]
    command += ["--port", "0", "--no-grpc"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "--trust-code" in done.stdout + done.stderr


@pytest.mark.parametrize("route", ["/predict/scaled", "/predictions/scaled"])
def test_concurrent_requests_each_get_their_own_answer(store, start_server, tmp_path, route):
    args = ["--store", str(store), "--trust-code", "--no-grpc", "--threads", "1"]
    rng = np.random.default_rng(0)
    requests = [
        {"tag": f"r{i}", "rows": rng.normal(size=(int(rng.integers(1, 6)), 4)).tolist()}
        for i in range(64)
    ]
    with (
        start_server(args, tmp_path / "server.log") as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(lambda body: client.post(route, json=body), requests))
        stats = client.get("/v2/models/scaled/stats").json()["model_stats"][0]
    eager = model()
    for body, answer in zip(requests, answers, strict=True):
        assert answer.status_code == 200, answer.text
        got = answer.json()
        got = got["result"] if route.startswith("/predict/") else got
        assert got["tag"] == body["tag"] and got["rows"] == len(body["rows"])
        assert got["route"] == ("predict" if route.startswith("/predict/") else "torchserve")
        with torch.no_grad():
            expected = eager(2.0 * torch.tensor(body["rows"], dtype=torch.float32)).numpy()
        np.testing.assert_allclose(np.array(got["y"]), expected, rtol=1e-5, atol=1e-5)
    # they shared batches: far fewer model runs than requests
    assert stats["inference_count"] == sum(len(b["rows"]) for b in requests)
    assert stats["execution_count"] < 64


def test_client_mistakes_are_400_and_handler_bugs_500(store, start_server, tmp_path):
    args = ["--store", str(store), "--trust-code", "--no-grpc", "--threads", "1"]
    with (
        start_server(args, tmp_path / "server.log") as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        mistake = client.post("/predict/scaled", json={"tag": "no rows"})
        assert mistake.status_code == 400 and '"rows"' in mistake.json()["error"]
        ragged = client.post("/predict/scaled", json={"rows": [[1, 2], [3]]})
        assert ragged.status_code == 500
        assert "preprocess" in ragged.json()["error"]
        shape = client.post("/predict/scaled", json={"rows": [[1, 2, 3]]})
        assert shape.status_code == 400 and "input 'x'" in shape.json()["error"]
        # a dtype the handler chose is not the client's to fix: the handler's fault, 500
        dtype = client.post("/predict/scaled", json={"rows": [[1, 2, 3, 4]], "tag": "wrong dtype"})
        assert dtype.status_code == 500 and "preprocess gave input 'x'" in dtype.json()["error"]
        assert client.post("/predict/scaled", json={"rows": [[1, 2, 3, 4]]}).status_code == 200
