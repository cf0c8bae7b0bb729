"""Encoded image bytes to the image handler's resized, center-cropped uint8 pixels.

torchvision's ``Resize(short side)`` then ``CenterCrop(size)``, with Pillow's bilinear filter.
Two ways in, with the same pixels out (within a level or two, see docs/handlers.md):

- JPEG through ``simplejpeg`` (libjpeg-turbo, the GIL released) when it is installed
  (``pip install torchferry[jpeg]``), decoded at the same 1/2, 1/4 or 1/8 DCT scale that
  Pillow's ``draft`` picks, so the two paths differ only in rounding;
- everything else through Pillow: PNG and other formats, JPEGs simplejpeg does not take
  (CMYK, YCCK, past the decompression-bomb limit) and any JPEG it cannot decode (truncated,
  corrupt), so that the answer, decoded or refused, is Pillow's as before.

The resize computes only the pixels that the crop keeps (Pillow's ``resize(box=...)`` over
the source region that maps onto the crop): the same filter taps, ~40% less work.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError


def _optional_simplejpeg() -> ModuleType | None:
    """simplejpeg when installed (the ``jpeg`` extra), else None: JPEGs go to Pillow."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


simplejpeg = _optional_simplejpeg()

#: True when JPEGs decode through simplejpeg.
FAST_JPEG = simplejpeg is not None

_PILLOW_ERRORS = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
)
_JPEG_SOI = b"\xff\xd8"
#: JPEG color spaces simplejpeg decodes as Pillow does (CMYK and YCCK stay with Pillow).
_FAST_COLORSPACES = frozenset({"YCbCr", "Gray"})


#: The color modes the image handler gives its model.
ColorMode = Literal["RGB", "L"]


class UndecodableImage(ValueError):
    """The bytes are not an image we can decode; ``str()`` says why, in words of ours."""


@dataclass(frozen=True)
class ImageGeometry:
    """What the pixels should look like: color mode, short side after resize, crop size."""

    color: ColorMode
    resize: int | None
    crop: int | None

    @property
    def target(self) -> int | None:
        """The smallest short side the decoder must keep (None: full size)."""
        return self.resize or self.crop


def decode_image(blob: bytes, geometry: ImageGeometry, fast: bool = FAST_JPEG) -> np.ndarray:
    """One encoded image to ``(H, W)`` (mode L) or ``(H, W, C)`` uint8, resized and cropped.

    ``fast=False`` forces Pillow (the reference the fast path is tested against).
    """
    image = _fast_jpeg(blob, geometry) if fast else None
    if image is None:
        image = _pillow(blob, geometry)
    return np.asarray(resize_and_crop(image, geometry), dtype=np.uint8)


def draft_request(width: int, height: int, target: int) -> tuple[int, int]:
    """The size asked of Pillow's ``draft``: just over the short side ``target``."""
    ratio = target / max(1, min(width, height))
    return int(width * ratio) + 1, int(height * ratio) + 1


def draft_scale(width: int, height: int, target: int) -> int:
    """The DCT scale divisor (1, 2, 4 or 8) that Pillow's ``draft`` picks for that request."""
    asked_width, asked_height = draft_request(width, height, target)
    scale = min(width // asked_width, height // asked_height)
    return next((s for s in (8, 4, 2) if scale >= s), 1)


def _pillow(blob: bytes, geometry: ImageGeometry) -> Image.Image:
    try:
        with Image.open(io.BytesIO(blob)) as opened:
            target = geometry.target
            if target is not None:
                # JPEG only (a no-op elsewhere): decode at 1/2, 1/4 or 1/8 scale while the
                # short side stays >= target, much faster for photos far larger than it.
                opened.draft(geometry.color, draft_request(opened.width, opened.height, target))
            return opened.convert(geometry.color)
    except _PILLOW_ERRORS as exc:
        # Pillow's messages may quote the file (a chunk's name): its kind of failure only
        raise UndecodableImage(_pillow_failure(exc)) from None


def _pillow_failure(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "unknown format"
    if isinstance(exc, Image.DecompressionBombError):
        return f"more pixels than the limit of {Image.MAX_IMAGE_PIXELS} (a decompression bomb?)"
    return f"the file is damaged or truncated ({type(exc).__name__})"


def _fast_jpeg(blob: bytes, geometry: ImageGeometry) -> Image.Image | None:
    """The JPEG decoded by simplejpeg as Pillow would, or None to leave it to Pillow."""
    if simplejpeg is None or blob[:2] != _JPEG_SOI:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(blob)
        limit = Image.MAX_IMAGE_PIXELS
        if colorspace not in _FAST_COLORSPACES or (limit and width * height > limit):
            return None  # Pillow converts CMYK its own way and warns or refuses bombs
        scale = 1 if geometry.target is None else draft_scale(width, height, geometry.target)
        # Pillow's draft decodes straight to luma for mode L; without a draft it converts RGB
        gray = geometry.color == "L" and geometry.target is not None
        pixels = simplejpeg.decode_jpeg(
            blob,
            colorspace="GRAY" if gray else "RGB",
            min_width=-(-width // scale),
            min_height=-(-height // scale),
        )
    except ValueError:
        return None  # truncated, corrupt or unusual: Pillow decodes it or says why not
    image = Image.fromarray(pixels[..., 0] if gray else pixels)
    return image if image.mode == geometry.color else image.convert(geometry.color)


def resize_and_crop(image: Image.Image, geometry: ImageGeometry) -> Image.Image:
    """Resize the short side to ``geometry.resize`` (aspect kept, as torchvision's ``Resize``)
    and center-crop ``geometry.crop`` square (zeros outside the image, as torchvision pads)."""
    width, height = image.size
    size = (width, height)
    if geometry.resize is not None:
        short, long = min(width, height), max(width, height)
        if short != geometry.resize:
            other = int(geometry.resize * long / short)
            size = (geometry.resize, other) if width <= height else (other, geometry.resize)
    crop = geometry.crop
    if crop is None:
        return image if size == image.size else image.resize(size, Image.Resampling.BILINEAR)
    left = round((size[0] - crop) / 2.0)
    top = round((size[1] - crop) / 2.0)
    if size == image.size or crop > min(size):
        if size != image.size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        return image.crop((left, top, left + crop, top + crop))
    # only the crop's pixels: the source region that maps onto it, at the same scale
    sx, sy = width / size[0], height / size[1]
    box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
    return image.resize((crop, crop), Image.Resampling.BILINEAR, box=box)
