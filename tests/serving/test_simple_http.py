"""Plain ``/predict``: JSON data, multipart uploads and raw image bytes, against the live server."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png(seed: int, size: int = 8) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def expected_top2(blob: bytes) -> list[str]:
    """The tiny_image model computed in numpy (its weights are fixed in conftest)."""
    pixels = np.asarray(Image.open(io.BytesIO(blob)).convert("L"), dtype=np.float32)
    x = (pixels / 255.0 - 0.449) / 0.226
    weights = np.arange(64 * 3, dtype=np.float32).reshape(64, 3) % 7 - 3
    logits = x.reshape(-1) @ weights
    return [["cat", "dog", "bird"][i] for i in np.argsort(-logits)[:2]]


def test_json_data_with_model_and_version(http):
    answer = http.post("/predict/adder/versions/1", json={"data": [[1, 2, 3, 4]]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["result"] == [{"y": [3.0, 5.0, 7.0, 9.0], "total": 10.0}]
    assert body["model_name"] == "adder" and body["model_version"] == "1"
    default = http.post("/predict/adder", json={"data": [[1, 2, 3, 4]]}).json()
    assert default["model_version"] == "2"


def test_predict_without_a_name_needs_exactly_one_model(http):
    answer = http.post("/predict", json={"data": [[1, 2, 3, 4]]})
    assert answer.status_code == 400
    assert "adder" in answer.json()["error"] and "tiny_image" in answer.json()["error"]


def test_multipart_upload_one_and_several_files(http):
    blobs = [png(1), png(2), png(3)]
    one = http.post("/predict/tiny_image", files={"file": ("a.png", blobs[0], "image/png")})
    assert one.status_code == 200, one.text
    (classes,) = one.json()["result"]
    assert [c["label"] for c in classes] == expected_top2(blobs[0])
    assert classes[0]["score"] >= classes[1]["score"] and set(classes[0]) == {
        "class",
        "label",
        "score",
    }
    files = [("file", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
    several = http.post("/predict/tiny_image", files=files).json()["result"]
    assert [[c["label"] for c in row] for row in several] == [expected_top2(b) for b in blobs]
    as_data = http.post("/predict/tiny_image", files={"data": ("a.png", blobs[0], "image/png")})
    assert as_data.json()["result"] == one.json()["result"]


def test_raw_image_bytes_and_octet_stream(http):
    blob = png(4)
    for content_type in ("image/png", "application/octet-stream"):
        answer = http.post(
            "/predict/tiny_image", content=blob, headers={"content-type": content_type}
        )
        assert answer.status_code == 200, answer.text
        assert [c["label"] for c in answer.json()["result"][0]] == expected_top2(blob)


def test_bad_payloads(http):
    text = http.post(
        "/predict/tiny_image", content=b"hello", headers={"content-type": "text/plain"}
    )
    assert text.status_code == 415 and "text/plain" in text.json()["error"]
    garbage = http.post(
        "/predict/tiny_image", content=b"\x00garbage", headers={"content-type": "image/png"}
    )
    assert garbage.status_code == 400 and "not an image" in garbage.json()["error"]
    no_file = http.post("/predict/tiny_image", files={"other": ("x", b"", "text/plain")})
    assert no_file.status_code == 400
    no_data = http.post("/predict/adder", json={"inputs": [[1, 2, 3, 4]]})
    assert no_data.status_code == 400 and '"data"' in no_data.json()["error"]
    upload_to_tensor = http.post("/predict/adder", files={"file": ("a.png", png(5), "image/png")})
    assert upload_to_tensor.status_code == 400
    assert http.post("/predict/nope", json={"data": [1]}).status_code == 404
