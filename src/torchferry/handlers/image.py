"""Image classification: decode, resize, center-crop and normalize uploads; answer top-k classes.

The preprocessing is torchvision's classic evaluation transform
(``Resize(256)``, ``CenterCrop(224)``, ``ToTensor()``, ``Normalize(mean, std)``) written with
Pillow and numpy only. Config keys (all optional): ``resize`` (short side, 256), ``crop``
(224), ``mean``, ``std``, ``top_k`` (5), ``labels`` (a JSON file in the archive), ``softmax``
(true), ``color`` (``"RGB"``, or ``"L"`` for grayscale models). ``resize`` or ``crop`` set to
null skips that step.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from torchferry.archive.store import Archive
from torchferry.errors import ArchiveError, InvalidInput
from torchferry.handlers.base import Handler, HandlerInput
from torchferry.handlers.tensor import output_order, tensors_from_json
from torchferry.handlers.topk import TopK
from torchferry.signature import TensorSpec

#: Color mode -> (mean, std) defaults: ImageNet's, averaged over channels for grayscale.
_DEFAULT_NORMALIZE: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "RGB": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "L": ((0.449,), (0.226,)),
}
_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
)


def _size(config: dict[str, Any], key: str, default: int) -> int | None:
    value = config.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArchiveError(f"image handler config {key!r} must be a positive integer or null")
    return value


def _per_channel(config: dict[str, Any], key: str, default: tuple[float, ...]) -> np.ndarray:
    value = config.get(key, default)
    try:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ArchiveError(f"image handler config {key!r} must be a list of numbers") from None
    if array.size != len(default):
        raise ArchiveError(
            f"image handler config {key!r} has {array.size} values; "
            f"color mode {config.get('color', 'RGB')!r} has {len(default)} channels"
        )
    return array


class ImageHandler(Handler):
    """Uploaded images to a normalized ``(N, C, H, W)`` batch; scores to top-k classes."""

    name = "image"

    def __init__(self, archive: Archive) -> None:
        super().__init__(archive)
        config = self.config
        self.color = str(config.get("color", "RGB"))
        if self.color not in _DEFAULT_NORMALIZE:
            raise ArchiveError(
                f"image handler config color {self.color!r}: expected one of "
                f"{sorted(_DEFAULT_NORMALIZE)}"
            )
        mean_default, std_default = _DEFAULT_NORMALIZE[self.color]
        self.resize = _size(config, "resize", 256)
        self.crop = _size(config, "crop", 224)
        mean = _per_channel(config, "mean", mean_default)
        std = _per_channel(config, "std", std_default)
        if np.any(std <= 0):
            raise ArchiveError("image handler config 'std' must be positive")
        # (x / 255 - mean) / std == x * scale - shift, computed in float32 per channel
        self.scale = (1.0 / (255.0 * std)).astype(np.float32)
        self.shift = (mean / std).astype(np.float32)
        self.top_k = TopK.from_config(archive, config, k=5, apply_softmax=True)
        self.spec = self._image_input()

    def _image_input(self) -> TensorSpec:
        """The model's one input, checked against the color mode and crop size."""
        model = self.archive.manifest.name
        if len(self.signature.inputs) != 1:
            raise ArchiveError(
                f"model {model!r}: the image handler needs one image input, the model has "
                f"{self.signature.input_names}"
            )
        spec = self.signature.inputs[0]
        channels = len(self.color)
        if len(spec.shape) != 4 or spec.numpy_dtype.kind != "f":
            raise ArchiveError(
                f"model {model!r}: the image handler needs a float input of shape "
                f"[N, C, H, W]; input {spec.name!r} is {list(spec.shape)} {spec.datatype}"
            )
        if spec.shape[1] not in (-1, channels):
            raise ArchiveError(
                f"model {model!r}: input {spec.name!r} takes {spec.shape[1]} channels, "
                f"the image handler's color mode {self.color!r} gives {channels}"
            )
        if self.crop is not None and any(d not in (-1, self.crop) for d in spec.shape[2:]):
            raise ArchiveError(
                f"model {model!r}: input {spec.name!r} takes {spec.shape[2]}x{spec.shape[3]} "
                f"images, the image handler crops to {self.crop}x{self.crop}"
            )
        return spec

    def _decode(self, blob: bytes, index: int, count: int) -> np.ndarray:
        """One encoded image to a ``(H, W)`` or ``(H, W, C)`` uint8 array, resized and cropped."""
        try:
            with Image.open(io.BytesIO(blob)) as image:
                target = self.resize or self.crop
                if target is not None:
                    # JPEG only (a no-op elsewhere): decode at 1/2, 1/4 or 1/8 scale while the
                    # short side stays >= target, much faster for photos far larger than it.
                    ratio = target / max(1, min(image.size))
                    image.draft(
                        self.color, (int(image.width * ratio) + 1, int(image.height * ratio) + 1)
                    )
                image = image.convert(self.color)
        except _DECODE_ERRORS as exc:
            # Pillow's own message for an unknown format names a BytesIO object: say it plainly
            reason = "unknown format" if isinstance(exc, UnidentifiedImageError) else str(exc)
            raise InvalidInput(
                f"file {index + 1} of {count} is not an image that can be decoded "
                f"(JPEG, PNG, ...): {reason}"
            ) from None
        if self.resize is not None:
            width, height = image.size
            short, long = min(width, height), max(width, height)
            if short != self.resize:
                other = int(self.resize * long / short)
                size = (self.resize, other) if width <= height else (other, self.resize)
                image = image.resize(size, Image.Resampling.BILINEAR)
        if self.crop is not None:
            width, height = image.size
            left = round((width - self.crop) / 2.0)
            top = round((height - self.crop) / 2.0)
            # outside the image (a crop larger than it) Pillow fills with zeros, as torchvision pads
            image = image.crop((left, top, left + self.crop, top + self.crop))
        return np.asarray(image, dtype=np.uint8)

    def preprocess(self, request: HandlerInput) -> dict[str, np.ndarray]:
        if not request.blobs:
            return tensors_from_json(self.signature, request.data)
        if request.data is not None:
            raise InvalidInput('send either image files or JSON "data", not both')
        count = len(request.blobs)
        images = [self._decode(blob, i, count) for i, blob in enumerate(request.blobs)]
        if any(image.shape != images[0].shape for image in images):
            raise InvalidInput(
                "the images differ in size after resizing and the handler has no crop set; "
                "send images of one size"
            )
        pixels = np.stack(images).reshape(count, *images[0].shape[:2], -1)
        batch = np.empty((count, pixels.shape[3], *pixels.shape[1:3]), dtype=np.float32)
        for channel in range(batch.shape[1]):
            np.multiply(pixels[..., channel], self.scale[channel], out=batch[:, channel])
            batch[:, channel] -= self.shift[channel]
        if batch.dtype != self.spec.numpy_dtype:
            batch = batch.astype(self.spec.numpy_dtype)
        return self.signature.validate_inputs({self.spec.name: batch})

    def postprocess(self, outputs: dict[str, np.ndarray]) -> list[Any]:
        return self.top_k(outputs[output_order(self.signature, outputs)[0]])
