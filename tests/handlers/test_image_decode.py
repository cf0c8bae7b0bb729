"""The image handler's decoders: simplejpeg's fast path against Pillow, and the cropped resize
against today's resize-then-crop. Bounds measured in bench/image_decode.py (docs/handlers.md)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from jpeg_samples import SAMPLES, JpegSample, photo_like, resize_then_crop
from PIL import Image

from torchferry.handlers import ImageHandler, load_handler
from torchferry.handlers.base import HandlerRequest
from torchferry.handlers.image_decode import (
    ImageGeometry,
    UndecodableImage,
    decode_image,
    resize_and_crop,
)

DEFAULT = ImageGeometry("RGB", 256, 224)


@pytest.fixture(scope="module")
def jpegs() -> dict[str, bytes]:
    """The samples, for the tests that compare with the fast path (skipped without it)."""
    pytest.importorskip("simplejpeg")
    return {sample.name: sample.encode() for sample in SAMPLES}


def differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


@pytest.mark.parametrize("color", ["RGB", "L"])
def test_fast_jpeg_matches_pillow(jpegs, color):
    """Both bundle libjpeg-turbo and decode at the same DCT scale: measured identical; the
    bound allows another libjpeg-turbo's rounding, not another scale or color conversion."""
    for geometry in (ImageGeometry(color, 256, 224), ImageGeometry(color, None, None)):
        for name, blob in jpegs.items():
            if geometry.target is None and "12 MP" in name:
                continue  # a full-size 12 MP decode twice adds time, not coverage
            diff = differences(
                decode_image(blob, geometry, fast=True), decode_image(blob, geometry, fast=False)
            )
            assert diff.max() <= 2, (name, geometry)
            assert (diff > 1).mean() <= 0.001, (name, geometry)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def test_jpegs_the_fast_path_declines_decode_as_before():
    """CMYK (Adobe's inverted kind too) and a PNG take Pillow's path whatever ``fast`` says."""
    photo = photo_like(300, 200)
    for blob in (encode(photo.convert("CMYK"), "JPEG"), encode(photo, "PNG")):
        fast = decode_image(blob, DEFAULT, fast=True)
        assert fast.shape == (224, 224, 3)
        np.testing.assert_array_equal(fast, decode_image(blob, DEFAULT, fast=False))


def refusal(blob: bytes, fast: bool) -> str:
    with pytest.raises(UndecodableImage) as caught:
        decode_image(blob, DEFAULT, fast=fast)
    return str(caught.value)


def test_broken_jpegs_get_the_same_answer_as_before():
    blob = JpegSample("x", 300, 200).encode()
    for broken in (blob[:500], blob[: len(blob) // 2], blob[:2] + b"\x00" * 100):
        assert refusal(broken, fast=True) == refusal(broken, fast=False)
    assert "truncated" in refusal(blob[: len(blob) // 2], fast=True)
    # damage inside the scan: Pillow decodes it anyway (libjpeg warns); so does the fast path
    damaged = bytearray(blob)
    damaged[len(blob) // 2 : len(blob) // 2 + 64] = bytes(64)
    np.testing.assert_array_equal(
        decode_image(bytes(damaged), DEFAULT, fast=True),
        decode_image(bytes(damaged), DEFAULT, fast=False),
    )


@pytest.mark.parametrize(
    "geometry",
    [
        DEFAULT,
        ImageGeometry("RGB", 256, None),
        ImageGeometry("RGB", None, 224),
        ImageGeometry("RGB", 200, 224),  # a crop larger than the short side: zero padding
        ImageGeometry("L", 256, 224),
    ],
)
@pytest.mark.parametrize("size", [(500, 375), (375, 500), (333, 256), (100, 80)])
def test_cropped_resize_matches_resize_then_crop(geometry, size):
    image = photo_like(*size).convert(geometry.color)
    diff = differences(
        np.asarray(resize_and_crop(image, geometry)),
        np.asarray(resize_then_crop(image, geometry)),
    )
    # float rounding of the filter's window at the crop's edge: measured <= 1 on <= 0.35%
    assert diff.max() <= 1 and (diff > 0).mean() < 0.005


def test_the_handler_gives_the_same_tensor_either_way(make_archive, jpegs):
    image_224 = [("image", "FP32", (-1, 3, 224, 224))]
    fast, pillow = (
        load_handler(
            make_archive(image_224, handler="image", config={"decoder": decoder}),
            trust_code=False,
        )
        for decoder in ("auto", "pillow")
    )
    assert isinstance(fast, ImageHandler) and isinstance(pillow, ImageHandler)
    assert fast.fast_jpeg and not pillow.fast_jpeg
    request = HandlerRequest(files={"file": [jpegs["photo 500x375"], jpegs["HD 1920x1080"]]})
    # two levels of 255 in normalized units (std >= 0.224)
    np.testing.assert_allclose(
        fast.preprocess(request)[0]["image"], pillow.preprocess(request)[0]["image"], atol=0.036
    )
