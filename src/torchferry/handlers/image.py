"""Image classification: decode, resize, center-crop and normalize uploads; answer top-k classes.

The preprocessing is torchvision's classic evaluation transform
(``Resize(256)``, ``CenterCrop(224)``, ``ToTensor()``, ``Normalize(mean, std)``) written with
Pillow and numpy only. Config keys (all optional): ``resize`` (short side, 256), ``crop``
(224), ``mean``, ``std``, ``top_k`` (5), ``labels`` (a JSON file in the archive), ``softmax``
(true), ``color`` (``"RGB"``, or ``"L"`` for grayscale models), ``decoder`` (``"auto"``:
simplejpeg for JPEGs when installed, see ``image_decode``; ``"pillow"``: Pillow always).
``resize`` or ``crop`` set to null skips that step.

Images come as uploaded files (multipart fields ``file``, ``data`` or ``body``, else every
upload; several files are several rows), or as the raw body with an ``image/*`` or
``application/octet-stream`` content type (on TorchServe's route, any body that is not JSON).
On TorchServe's route a base64 string (a JSON string, ``{"data": "..."}``, or a text field) is
one image too. JSON tensors (``{"data": ...}``) skip the image pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np

from torchferry.codecs.jsonio import loads
from torchferry.errors import ArchiveError, InvalidInput
from torchferry.handlers.base import Handler, HandlerContext, HandlerRequest
from torchferry.handlers.image_decode import (
    FAST_JPEG,
    ColorMode,
    ImageGeometry,
    UndecodableImage,
    decode_image,
)
from torchferry.handlers.payload import (
    TORCHSERVE,
    PayloadState,
    base64_file,
    body_json,
    classes_answer,
    form_texts,
    is_file_media,
    is_multipart,
    raw_body,
    request_data,
    unsupported,
    uploads,
)
from torchferry.handlers.tensor import output_order, tensors_from_json
from torchferry.handlers.topk import TopK
from torchferry.signature import ModelSignature, TensorSpec

#: Color mode -> (mean, std) defaults: ImageNet's, averaged over channels for grayscale.
_DEFAULT_NORMALIZE: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "RGB": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "L": ((0.449,), (0.226,)),
}
#: ``decoder`` config values: "auto" takes simplejpeg for JPEGs where it is installed.
_DECODERS = ("auto", "pillow")


def _size(config: Mapping[str, Any], key: str, default: int) -> int | None:
    value = config.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArchiveError(f"image handler config {key!r} must be a positive integer or null")
    return value


def _per_channel(config: Mapping[str, Any], key: str, default: tuple[float, ...]) -> np.ndarray:
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

    def setup(self, ctx: HandlerContext) -> None:
        super().setup(ctx)
        config = ctx.config
        self.signature: ModelSignature = ctx.signature
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
        self.geometry = ImageGeometry(cast(ColorMode, self.color), self.resize, self.crop)
        decoder = config.get("decoder", "auto")
        if decoder not in _DECODERS:
            raise ArchiveError(
                f"image handler config decoder {decoder!r}: expected one of {list(_DECODERS)}"
            )
        self.fast_jpeg = FAST_JPEG and decoder == "auto"
        self.top_k = TopK.from_config(ctx.files, config, k=5, apply_softmax=True)
        self.spec = self._image_input()

    def _image_input(self) -> TensorSpec:
        """The model's one input, checked against the color mode and crop size."""
        if len(self.signature.inputs) != 1:
            raise ArchiveError(
                f"the image handler needs one image input, the model has "
                f"{self.signature.input_names}"
            )
        spec = self.signature.inputs[0]
        channels = len(self.color)
        if len(spec.shape) != 4 or spec.numpy_dtype.kind != "f":
            raise ArchiveError(
                f"the image handler needs a float input of shape "
                f"[N, C, H, W]; input {spec.name!r} is {list(spec.shape)} {spec.datatype}"
            )
        if spec.shape[1] not in (-1, channels):
            raise ArchiveError(
                f"input {spec.name!r} takes {spec.shape[1]} channels, "
                f"the image handler's color mode {self.color!r} gives {channels}"
            )
        if self.crop is not None and any(d not in (-1, self.crop) for d in spec.shape[2:]):
            raise ArchiveError(
                f"input {spec.name!r} takes {spec.shape[2]}x{spec.shape[3]} "
                f"images, the image handler crops to {self.crop}x{self.crop}"
            )
        return spec

    def _decode(self, blob: bytes, index: int, count: int) -> np.ndarray:
        """One encoded image to a ``(H, W)`` or ``(H, W, C)`` uint8 array, resized and cropped."""
        try:
            return decode_image(blob, self.geometry, fast=self.fast_jpeg)
        except UndecodableImage as exc:
            raise InvalidInput(
                f"file {index + 1} of {count} is not an image that can be decoded "
                f"(JPEG, PNG, ...): {exc}"
            ) from None

    def _pixels(self, blobs: list[bytes]) -> np.ndarray:
        """Encoded images to the model's normalized ``(N, C, H, W)`` batch."""
        count = len(blobs)
        images = [self._decode(blob, i, count) for i, blob in enumerate(blobs)]
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
        return batch

    def _payload(self, request: HandlerRequest) -> tuple[list[bytes] | None, Any]:
        """The request's image files, or (None, its JSON tensor data)."""
        torchserve = request.route == TORCHSERVE
        if is_multipart(request):
            files = uploads(request)
            texts = form_texts(request, any_field=not files)
            if files and texts:
                raise InvalidInput('send either image files or JSON "data", not both')
            if files:
                return files, None
            if not texts:
                raise InvalidInput('the multipart body has no file; upload it as field "file"')
            if torchserve:
                return [base64_file(texts[-1])], None
            value = loads(texts[-1].encode("utf-8"), 'the multipart field "data"')
            return None, request_data(value, self.signature, strict=False)
        media = request.media_type
        if request.is_json or (not torchserve and media == ""):
            data = request_data(body_json(request), self.signature, strict=not torchserve)
            if torchserve and isinstance(data, str):
                return [base64_file(data)], None
            return None, data
        if torchserve or is_file_media(media):
            return [raw_body(request)], None
        raise unsupported(
            request,
            'application/json {"data": ...}, multipart/form-data with a "file" field, '
            "image/*, or application/octet-stream",
        )

    def preprocess(self, request: HandlerRequest) -> tuple[dict[str, np.ndarray], PayloadState]:
        state = PayloadState(request.route)
        blobs, data = self._payload(request)
        if blobs is None:
            return tensors_from_json(self.signature, data), state
        return {self.spec.name: self._pixels(blobs)}, state

    def postprocess(self, outputs: dict[str, np.ndarray], state: PayloadState) -> Any:
        return classes_answer(self.top_k(outputs[output_order(self.signature, outputs)[0]]), state)
