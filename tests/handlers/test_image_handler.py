from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from torchferry.errors import ArchiveError, InvalidInput
from torchferry.handlers import ImageHandler, load_handler
from torchferry.handlers.base import HandlerInput

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
IMAGE_224 = ("image", "FP32", (-1, 3, 224, 224))


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
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    archive = make_archive(
        [("image", "FP32", (-1, 3, 2, 2))], handler="image", config={"resize": None, "crop": 2}
    )
    handler = load_handler(archive)
    assert isinstance(handler, ImageHandler)
    out = handler.preprocess(HandlerInput(blobs=[encode(Image.fromarray(pixels), "PNG")]))
    batch = out["image"]
    assert batch.shape == (1, 3, 2, 2) and batch.dtype == np.float32
    # crop of 2 from 6x4: left = round((6 - 2) / 2) = 2, top = round((4 - 2) / 2) = 1
    window = pixels[1:3, 2:4].astype(np.float64) / 255.0
    expected = ((window - MEAN) / STD).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(batch, expected, rtol=1e-5, atol=1e-5)


def test_jpeg_default_pipeline_shape_and_values(make_archive):
    handler = ImageHandler(make_archive([IMAGE_224], handler="image"))
    color = (200, 30, 90)
    jpeg = encode(Image.new("RGB", (640, 480), color), "JPEG", quality=95)
    batch = handler.preprocess(HandlerInput(blobs=[jpeg, jpeg]))["image"]
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == np.float32
    expected = (np.array(color) / 255.0 - MEAN) / STD
    # JPEG is lossy: a flat color comes back within a couple of levels
    np.testing.assert_allclose(batch.mean(axis=(0, 2, 3)), expected, atol=3 / 255 / 0.22)


def test_resize_keeps_aspect_like_torchvision(make_archive):
    archive = make_archive(
        [("image", "FP32", (-1, 3, -1, -1))], handler="image", config={"crop": None}
    )
    handler = ImageHandler(archive)
    wide = handler.preprocess(HandlerInput(blobs=[encode(gradient(300, 200), "PNG")]))
    assert wide["image"].shape == (1, 3, 256, 384)
    tall = handler.preprocess(HandlerInput(blobs=[encode(gradient(200, 301), "PNG")]))
    assert tall["image"].shape == (1, 3, 385, 256)  # int(256 * 301 / 200)


def test_large_jpeg_draft_decode_stays_close_to_a_full_decode(make_archive):
    handler = ImageHandler(make_archive([IMAGE_224], handler="image"))
    image = gradient(2048, 1536)
    fast = handler.preprocess(HandlerInput(blobs=[encode(image, "JPEG", quality=95)]))["image"]
    # the same pipeline without draft: from the exact pixels, as a PNG
    exact = handler.preprocess(HandlerInput(blobs=[encode(image, "PNG")]))["image"]
    assert np.abs(fast - exact).mean() < 0.05  # in normalized units (std ~0.22)


def test_grayscale_mode(make_archive):
    archive = make_archive(
        [("image", "FP32", (-1, 1, 4, 4))],
        handler="image",
        config={"color": "L", "resize": 4, "crop": 4},
    )
    handler = ImageHandler(archive)
    rgb = (30, 160, 220)
    batch = handler.preprocess(HandlerInput(blobs=[encode(Image.new("RGB", (8, 8), rgb), "PNG")]))
    assert batch["image"].shape == (1, 1, 4, 4)
    gray = round(rgb[0] * 0.299 + rgb[1] * 0.587 + rgb[2] * 0.114)  # Pillow's L conversion
    np.testing.assert_allclose(batch["image"], (gray / 255 - 0.449) / 0.226, atol=1e-2)


def test_not_an_image(make_archive):
    handler = ImageHandler(make_archive([IMAGE_224], handler="image"))
    png = encode(gradient(10, 10), "PNG")
    with pytest.raises(InvalidInput, match="file 2 of 2 is not an image"):
        handler.preprocess(HandlerInput(blobs=[png, b"hello, not an image"]))
    truncated = encode(gradient(300, 300), "JPEG")[:500]
    with pytest.raises(InvalidInput, match="not an image"):
        handler.preprocess(HandlerInput(blobs=[truncated]))


def test_json_data_goes_through_the_tensor_path(make_archive):
    archive = make_archive([("image", "FP32", (-1, 3, 2, 2))], handler="image", config={"crop": 2})
    handler = ImageHandler(archive)
    out = handler.preprocess(HandlerInput(data=np.zeros((3, 2, 2)).tolist()))
    assert out["image"].shape == (1, 3, 2, 2)
    with pytest.raises(InvalidInput, match="not both"):
        handler.preprocess(HandlerInput(data=[1], blobs=[b"x"]))


def test_postprocess_top5_softmax_with_labels(make_archive):
    labels = {str(i): [f"n{i}", f"class {i}"] for i in range(10)}
    archive = make_archive(
        [IMAGE_224],
        handler="image",
        config={"labels": "index_to_name.json"},
        files={"index_to_name.json": labels},
    )
    handler = ImageHandler(archive)
    logits = np.arange(10, dtype=np.float32)[None]
    (row,) = handler.postprocess({"y": logits})
    assert [c["class"] for c in row] == [9, 8, 7, 6, 5]
    assert row[0]["label"] == "class 9"
    expected = np.exp(9.0) / np.exp(np.arange(10.0)).sum()
    assert row[0]["score"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("inputs", "config", "message"),
    [
        ([IMAGE_224], {"color": "L"}, "channels"),
        ([IMAGE_224], {"crop": 256}, "crops to 256x256"),
        ([IMAGE_224], {"color": "CMYK"}, "color"),
        ([IMAGE_224], {"mean": [0.5]}, "'mean' has 1 values"),
        ([IMAGE_224], {"resize": -1}, "positive integer"),
        ([("x", "FP32", (-1, 10))], {}, r"\[N, C, H, W\]"),
        ([IMAGE_224, ("y", "FP32", (-1, 1))], {}, "one image input"),
    ],
)
def test_bad_configuration_fails_at_load(make_archive, inputs, config, message):
    with pytest.raises(ArchiveError, match=message):
        ImageHandler(make_archive(inputs, handler="image", config=config))
