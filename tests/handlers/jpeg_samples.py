"""Photo-like JPEGs for comparing the image handler's decoders (tests and bench/image_decode.py).

Smooth gradients, hard-edged blocks and fine texture: the content on which DCT scaling,
chroma upsampling and the resize filter could disagree. Sizes are those of real uploads.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from torchferry.handlers.image_decode import ImageGeometry, draft_request

#: Pillow's ``subsampling`` values for JPEG's chroma layouts.
SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


@dataclass(frozen=True)
class JpegSample:
    name: str
    width: int
    height: int
    mode: str = "RGB"  # "L": a grayscale JPEG
    subsampling: str = "4:2:0"
    quality: int = 90
    progressive: bool = False

    def encode(self, seed: int = 0) -> bytes:
        image = photo_like(self.width, self.height, seed)
        if self.mode == "L":
            image = image.convert("L")
        out = io.BytesIO()
        image.save(
            out,
            format="JPEG",
            quality=self.quality,
            subsampling=SUBSAMPLING[self.subsampling],
            progressive=self.progressive,
        )
        return out.getvalue()


SAMPLES = (
    JpegSample("photo 500x375", 500, 375),
    JpegSample("photo 500x375 4:4:4", 500, 375, subsampling="4:4:4"),
    JpegSample("portrait 375x500", 375, 500),
    JpegSample("progressive 4:2:2 640x480", 640, 480, subsampling="4:2:2", progressive=True),
    JpegSample("HD 1920x1080", 1920, 1080),
    JpegSample("HD 1920x1080 4:4:4", 1920, 1080, subsampling="4:4:4"),
    JpegSample("12 MP 4000x3000", 4000, 3000),
    JpegSample("small 100x80", 100, 80),
    JpegSample("gray 500x375", 500, 375, mode="L"),
    JpegSample("gray 1920x1080", 1920, 1080, mode="L"),
)


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gradients and hard-edged blocks drawn at 1/4 size and upscaled, plus a tiled grain at
    full size: cheap even at 12 MP."""
    rng = np.random.default_rng(seed)
    small_w, small_h = max(1, width // 4), max(1, height // 4)
    x = np.linspace(0.0, 1.0, small_w)[None, :, None]
    y = np.linspace(0.0, 1.0, small_h)[:, None, None]
    phase = rng.uniform(0, 6, 3)
    base = 128 + 90 * np.sin(x * (3 + 2 * phase) + phase) * np.cos(y * (2 + phase))
    blocks = rng.integers(-60, 60, (40, 40, 3))
    rows = np.arange(small_h) * 40 // small_h
    cols = np.arange(small_w) * 40 // small_w
    small = np.clip(base + blocks[rows][:, cols] + rng.normal(0, 10, (*base.shape[:2], 3)), 0, 255)
    image = Image.fromarray(small.astype(np.uint8)).resize((width, height))
    grain = rng.integers(-8, 9, (64, 64, 3), dtype=np.int16)
    tiled = np.tile(grain, (-(-height // 64), -(-width // 64), 1))[:height, :width]
    pixels = np.asarray(image, dtype=np.int16) + tiled
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def decode_as_before(blob: bytes, geometry: ImageGeometry) -> np.ndarray:
    """The image handler's Pillow pipeline before the fast path: the reference."""
    with Image.open(io.BytesIO(blob)) as opened:
        if geometry.target is not None:
            opened.draft(
                geometry.color, draft_request(opened.width, opened.height, geometry.target)
            )
        image = opened.convert(geometry.color)
    return np.asarray(resize_then_crop(image, geometry))


def resize_then_crop(image: Image.Image, geometry: ImageGeometry) -> Image.Image:
    """The handler's resize and crop before the cropped resize: the whole image, then the crop."""
    width, height = image.size
    if geometry.resize is not None and min(width, height) != geometry.resize:
        short, long = min(width, height), max(width, height)
        other = int(geometry.resize * long / short)
        size = (geometry.resize, other) if width <= height else (other, geometry.resize)
        image = image.resize(size, Image.Resampling.BILINEAR)
    if geometry.crop is not None:
        width, height = image.size
        left, top = round((width - geometry.crop) / 2.0), round((height - geometry.crop) / 2.0)
        image = image.crop((left, top, left + geometry.crop, top + geometry.crop))
    return image
