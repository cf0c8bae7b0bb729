"""``torchferry predict`` against the live server, for each kind of request it can send."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
from PIL import Image


def predict(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torchferry.cli", "predict", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_predict_sends_v2_v1_and_predict_json_npy_and_images(live_server, tmp_path):
    v2 = tmp_path / "v2.json"
    row = [1.0, 2.0, 3.0, 4.0]
    v2.write_text(
        json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": row}]})
    )
    answer = predict(live_server.url, "--model", "adder", "--version", "1", "--json", str(v2))
    assert answer.returncode == 0, answer.stderr
    outputs = {o["name"]: o["data"] for o in json.loads(answer.stdout)["outputs"]}
    assert outputs["y"] == [3.0, 5.0, 7.0, 9.0]

    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps({"instances": [row]}))
    answer = predict(live_server.url, "--model", "adder", "--version", "1", "--json", str(v1))
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["predictions"][0]["y"] == [3.0, 5.0, 7.0, 9.0]

    npy = tmp_path / "x.npy"
    np.save(npy, np.array([row], dtype=np.float32))
    answer = predict(live_server.url, "--model", "adder", "--npy", f"x={npy}")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["y"] == [[4.0, 7.0, 10.0, 13.0]]  # version 2: 3x + 1

    image = tmp_path / "digit.png"
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    image.write_bytes(buffer.getvalue())
    answer = predict(live_server.url, "--model", "tiny_image", "--image", str(image))
    assert answer.returncode == 0, answer.stderr
    top = json.loads(answer.stdout)["result"][0]
    assert len(top) == 2 and {"class", "label", "score"} <= set(top[0])


def test_predict_reports_server_errors_and_exits_non_zero(live_server, tmp_path):
    body = tmp_path / "bad.json"
    body.write_text(json.dumps({"data": [[1, 2]]}))
    answer = predict(live_server.url, "--model", "adder", "--json", str(body))
    assert answer.returncode == 1
    assert "400" in answer.stderr and "'x'" in answer.stderr
    answer = predict(live_server.url, "--model", "nope", "--json", str(body))
    assert answer.returncode == 1 and "404" in answer.stderr
