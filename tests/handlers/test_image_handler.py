from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from torchferry.errors import ArchiveError, InvalidInput, UnsupportedMediaType
from torchferry.handlers import ImageHandler, load_handler
from torchferry.handlers.base import Handler, HandlerRequest
from torchferry.handlers.payload import PayloadState

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
IMAGE_224 = ("image", "FP32", (-1, 3, 224, 224))
MULTIPART = "multipart/form-data; boundary=x"


def load(archive) -> Handler:
    return load_handler(archive, trust_code=False)


def upload(*blobs: bytes, field: str = "file", route: str = "predict") -> HandlerRequest:
    return HandlerRequest(content_type=MULTIPART, files={field: list(blobs)}, route=route)


def pixels(handler: Handler, request: HandlerRequest) -> np.ndarray:
    inputs, _ = handler.preprocess(request)
    return handler.ctx.signature.validate_inputs(inputs)["image"]


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    """A smooth RGB image: red grows left to right, green top to bottom, blue constant."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    pixels = np.stack([x, y, np.full_like(x, 100)], axis=-1).round().astype(np.uint8)
    return Image.fromarray(pixels)


def test_png_center_crop_matches_a_hand_computation(make_archive):
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    archive = make_archive(
        [("image", "FP32", (-1, 3, 2, 2))], handler="image", config={"resize": None, "crop": 2}
    )
    handler = load(archive)
    assert isinstance(handler, ImageHandler)
    batch = pixels(handler, upload(encode(Image.fromarray(image), "PNG")))
    assert batch.shape == (1, 3, 2, 2) and batch.dtype == np.float32
    # crop of 2 from 6x4: left = round((6 - 2) / 2) = 2, top = round((4 - 2) / 2) = 1
    window = image[1:3, 2:4].astype(np.float64) / 255.0
    expected = ((window - MEAN) / STD).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(batch, expected, rtol=1e-5, atol=1e-5)


def test_jpeg_default_pipeline_shape_and_values(make_archive):
    handler = load(make_archive([IMAGE_224], handler="image"))
    color = (200, 30, 90)
    jpeg = encode(Image.new("RGB", (640, 480), color), "JPEG", quality=95)
    batch = pixels(handler, upload(jpeg, jpeg))
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == np.float32
    expected = (np.array(color) / 255.0 - MEAN) / STD
    # JPEG is lossy: a flat color comes back within a couple of levels
    np.testing.assert_allclose(batch.mean(axis=(0, 2, 3)), expected, atol=3 / 255 / 0.22)


def test_resize_keeps_aspect_like_torchvision(make_archive):
    archive = make_archive(
        [("image", "FP32", (-1, 3, -1, -1))], handler="image", config={"crop": None}
    )
    handler = load(archive)
    wide = pixels(handler, upload(encode(gradient(300, 200), "PNG")))
    assert wide.shape == (1, 3, 256, 384)
    tall = pixels(handler, upload(encode(gradient(200, 301), "PNG")))
    assert tall.shape == (1, 3, 385, 256)  # int(256 * 301 / 200)


def test_large_jpeg_draft_decode_stays_close_to_a_full_decode(make_archive):
    handler = load(make_archive([IMAGE_224], handler="image"))
    image = gradient(2048, 1536)
    fast = pixels(handler, upload(encode(image, "JPEG", quality=95)))
    # the same pipeline without draft: from the exact pixels, as a PNG
    exact = pixels(handler, upload(encode(image, "PNG")))
    assert np.abs(fast - exact).mean() < 0.05  # in normalized units (std ~0.22)


def test_grayscale_mode(make_archive):
    archive = make_archive(
        [("image", "FP32", (-1, 1, 4, 4))],
        handler="image",
        config={"color": "L", "resize": 4, "crop": 4},
    )
    handler = load(archive)
    rgb = (30, 160, 220)
    batch = pixels(handler, upload(encode(Image.new("RGB", (8, 8), rgb), "PNG")))
    assert batch.shape == (1, 1, 4, 4)
    gray = round(rgb[0] * 0.299 + rgb[1] * 0.587 + rgb[2] * 0.114)  # Pillow's L conversion
    np.testing.assert_allclose(batch, (gray / 255 - 0.449) / 0.226, atol=1e-2)


def test_not_an_image(make_archive):
    handler = load(make_archive([IMAGE_224], handler="image"))
    png = encode(gradient(10, 10), "PNG")
    with pytest.raises(InvalidInput, match="file 2 of 2 is not an image"):
        handler.preprocess(upload(png, b"hello, not an image"))
    truncated = encode(gradient(300, 300), "JPEG")[:500]
    with pytest.raises(InvalidInput, match="not an image"):
        handler.preprocess(HandlerRequest(body=truncated, content_type="image/jpeg"))


def test_json_data_goes_through_the_tensor_path(make_archive):
    archive = make_archive([("image", "FP32", (-1, 3, 2, 2))], handler="image", config={"crop": 2})
    handler = load(archive)
    value = {"data": np.zeros((3, 2, 2)).tolist()}
    for route in ("predict", "torchserve"):
        request = HandlerRequest(json.dumps(value).encode(), "application/json", route=route)
        assert pixels(handler, request).shape == (1, 3, 2, 2)
    both = HandlerRequest(content_type=MULTIPART, files={"file": [b"x"]}, form={"data": ["[1]"]})
    with pytest.raises(InvalidInput, match="not both"):
        handler.preprocess(both)


def test_postprocess_top5_softmax_with_labels(make_archive):
    labels = {str(i): [f"n{i}", f"class {i}"] for i in range(10)}
    archive = make_archive(
        [IMAGE_224],
        handler="image",
        config={"labels": "index_to_name.json"},
        files={"index_to_name.json": labels},
    )
    handler = load(archive)
    logits = np.arange(10, dtype=np.float32)[None]
    (row,) = handler.postprocess({"y": logits}, PayloadState("predict"))
    assert [c["class"] for c in row] == [9, 8, 7, 6, 5]
    assert row[0]["label"] == "class 9"
    expected = np.exp(9.0) / np.exp(np.arange(10.0)).sum()
    assert row[0]["score"] == pytest.approx(expected, rel=1e-5)
    # TorchServe's image_classifier answer: {label: probability}, best first; one row by itself
    answer = handler.postprocess({"y": logits}, PayloadState("torchserve"))
    assert list(answer) == [f"class {i}" for i in (9, 8, 7, 6, 5)]
    assert answer["class 9"] == pytest.approx(expected, rel=1e-5)
    two = handler.postprocess({"y": np.concatenate([logits, logits])}, PayloadState("torchserve"))
    assert two == [answer, answer]


@pytest.mark.parametrize(
    ("inputs", "config", "message"),
    [
        ([IMAGE_224], {"color": "L"}, "channels"),
        ([IMAGE_224], {"crop": 256}, "crops to 256x256"),
        ([IMAGE_224], {"color": "CMYK"}, "color"),
        ([IMAGE_224], {"mean": [0.5]}, "'mean' has 1 values"),
        ([IMAGE_224], {"resize": -1}, "positive integer"),
        ([IMAGE_224], {"decoder": "turbo"}, "decoder 'turbo'"),
        ([("x", "FP32", (-1, 10))], {}, r"\[N, C, H, W\]"),
        ([IMAGE_224, ("y", "FP32", (-1, 1))], {}, "one image input"),
    ],
)
def test_bad_configuration_fails_at_load(make_archive, inputs, config, message):
    with pytest.raises(ArchiveError, match=message):
        load(make_archive(inputs, handler="image", config=config))


SMALL = ("image", "FP32", (-1, 3, 4, 4))
SMALL_CONFIG = {"resize": 4, "crop": 4}


def flat(color: tuple[int, int, int]) -> bytes:
    return encode(Image.new("RGB", (6, 6), color), "PNG")


def colors(batch: np.ndarray) -> list[list[int]]:
    """Each row's (flat) color back in 0..255, undoing the normalization."""
    values = batch.mean(axis=(2, 3)) * STD + MEAN
    return np.rint(values * 255).astype(int).tolist()


RED, GREEN, BLUE = (250, 0, 0), (0, 250, 0), (0, 0, 250)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (HandlerRequest(body=flat(RED), content_type="image/png"), [RED]),
        (HandlerRequest(body=flat(RED), content_type="application/octet-stream"), [RED]),
        (HandlerRequest(body=flat(RED), route="torchserve"), [RED]),  # curl -T kitten.jpg
        (upload(flat(RED), flat(GREEN), field="data"), [RED, GREEN]),  # several files = rows
        # the payload fields win over others; without them every upload counts
        (HandlerRequest(files={"other": [flat(BLUE)], "body": [flat(RED)]}), [RED]),
        (HandlerRequest(files={"a": [flat(RED)], "b": [flat(GREEN)]}), [RED, GREEN]),
        # TorchServe's vision handlers also take base64: a JSON string, "data", a text field
        (
            HandlerRequest(
                json.dumps(base64.b64encode(flat(GREEN)).decode()).encode(),
                "application/json",
                route="torchserve",
            ),
            [GREEN],
        ),
        (
            HandlerRequest(
                json.dumps({"data": base64.b64encode(flat(BLUE)).decode()}).encode(),
                "application/json",
                route="torchserve",
            ),
            [BLUE],
        ),
        (
            HandlerRequest(
                form={"data": [base64.b64encode(flat(RED)).decode()]}, route="torchserve"
            ),
            [RED],
        ),
    ],
)
def test_where_images_come_from(make_archive, request_, expected):
    handler = load(make_archive([SMALL], handler="image", config=SMALL_CONFIG))
    assert colors(pixels(handler, request_)) == [list(c) for c in expected]


def test_payload_errors(make_archive):
    handler = load(make_archive([SMALL], handler="image", config=SMALL_CONFIG))
    with pytest.raises(UnsupportedMediaType, match="text/plain"):
        handler.preprocess(HandlerRequest(body=b"hello", content_type="text/plain"))
    with pytest.raises(InvalidInput, match="empty"):
        handler.preprocess(HandlerRequest(body=b"", content_type="image/png"))
    with pytest.raises(InvalidInput, match="base64"):
        handler.preprocess(
            HandlerRequest(b'{"data": "@@"}', "application/json", route="torchserve")
        )
    with pytest.raises(InvalidInput, match="no file"):
        handler.preprocess(HandlerRequest(content_type=MULTIPART))
    with pytest.raises(InvalidInput, match='"data"'):
        handler.preprocess(HandlerRequest(b'{"inputs": [1]}', "application/json"))


def test_threads_share_one_handler(make_archive):
    from concurrent.futures import ThreadPoolExecutor

    handler = load(make_archive([SMALL], handler="image", config=SMALL_CONFIG))
    requests = [
        upload(*[flat(c)] * n, route=route)
        for n, c, route in [(1, RED, "torchserve"), (2, GREEN, "predict"), (3, BLUE, "predict")]
    ] * 10

    def run(request: HandlerRequest) -> tuple[list[list[int]], str]:
        inputs, state = handler.preprocess(request)
        return colors(inputs["image"]), state.route

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, requests))
    for request, (rows, route) in zip(requests, results, strict=True):
        assert len(rows) == len(request.files["file"]) and route == request.route
