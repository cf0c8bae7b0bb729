"""What the built-in handlers share: reading the parts of a payload request, and shaping an
answer as each route's clients expect it.

Routes: ``/predict`` answers ``{"model_name", "model_version", "result": answer}`` and the
built-in handlers' answer is one entry per row. TorchServe's ``/predictions`` answers as
TorchServe's own handlers do: one row by itself, several rows as a list, and a classifier's
row as ``{label: score}``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torchferry.codecs.jsonio import loads
from torchferry.errors import InvalidInput, UnsupportedMediaType
from torchferry.handlers.base import HandlerRequest
from torchferry.handlers.topk import label_scores
from torchferry.signature import ModelSignature

TORCHSERVE = "torchserve"
#: Multipart fields that carry the payload; other fields count only when none of these is sent.
FILE_FIELDS = ("data", "file", "body")
_FILE_MEDIA = ("application/octet-stream",)
#: A media type as RFC 6838 spells one (``type/subtype``, 127 characters each at most).
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


@dataclass(frozen=True, slots=True)
class PayloadState:
    """What a built-in handler's ``postprocess`` needs of its request."""

    route: str


def is_multipart(request: HandlerRequest) -> bool:
    return request.media_type == "multipart/form-data" or bool(request.files) or bool(request.form)


def uploads(request: HandlerRequest) -> list[bytes]:
    """Uploaded files of the payload fields, else every uploaded file, in order."""
    preferred = [b for name, blobs in request.files.items() if name in FILE_FIELDS for b in blobs]
    return preferred or [blob for blobs in request.files.values() for blob in blobs]


def form_texts(request: HandlerRequest, *, any_field: bool = True) -> list[str]:
    """Text fields of the payload fields, else (with ``any_field``) every text field."""
    preferred = [t for name, texts in request.form.items() if name in FILE_FIELDS for t in texts]
    if preferred or not any_field:
        return preferred
    return [text for texts in request.form.values() for text in texts]


def is_file_media(media: str) -> bool:
    """A content type whose body is a file (an image, or bytes of no stated kind)."""
    return media.startswith("image/") or media in _FILE_MEDIA


def body_json(request: HandlerRequest) -> Any:
    """The body as JSON, whatever its content type says (``curl -T`` and ``curl -d`` send
    JSON as raw bytes or as a form)."""
    if request.is_json:
        return request.json
    return loads(request.body)


def raw_body(request: HandlerRequest) -> bytes:
    if not request.body:
        raise InvalidInput("the request body is empty; send the input's bytes or JSON")
    return request.body


def base64_file(text: str) -> bytes:
    """A file sent as a base64 JSON string or text field, as TorchServe's vision handlers take."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("a JSON string or text field must be a base64-encoded file") from None


def unsupported(request: HandlerRequest, accepted: str) -> UnsupportedMediaType:
    """415 naming the media type sent; never its parameters (a multipart boundary, a charset:
    whatever the client put there)."""
    media = request.media_type
    named = repr(media) if _MEDIA_TYPE.fullmatch(media) else "that the request names"
    return UnsupportedMediaType(f"content type {named} is not supported; send {accepted}")


def request_data(value: Any, signature: ModelSignature, *, strict: bool) -> Any:
    """The tensor data of a JSON value: ``{"data": X}`` gives X. Unless ``strict`` (the body
    of ``/predict``, which must be ``{"data": ...}``), a bare value and an object of the
    model's input names are the data themselves."""
    names = signature.input_names
    if isinstance(value, Mapping):
        keys = [str(key) for key in value]
        by_input = bool(keys) and all(key in names for key in keys)
        if "data" in value and (strict or not (by_input and len(keys) > 1)):
            return value["data"]
        if by_input and not strict:
            return value
        # its keys are not shown: an object that is not the model's inputs may be any data
        raise InvalidInput(
            f'the JSON object has no "data" and its {len(keys)} keys are not the model\'s '
            f'inputs; send {{"data": ...}} with the input\'s rows, or an object mapping each '
            f"of the inputs {names} to its rows"
        )
    if strict:
        raise InvalidInput(
            f'the JSON body must be an object {{"data": ...}} holding the rows of the inputs '
            f"{names}"
        )
    return value


def shape_rows(rows: list[Any], state: PayloadState) -> Any:
    """The answer to a request whose rows are ``rows``: the list itself on ``/predict``; on
    TorchServe's route one row by itself and several as a list."""
    if state.route == TORCHSERVE and len(rows) == 1:
        return rows[0]
    return rows


def classes_answer(rows: list[list[dict[str, Any]]], state: PayloadState) -> Any:
    """Top-k classes per row as each route answers them: the ``{class, label, score}`` lists
    on ``/predict``; on TorchServe's route ``image_classifier``'s ``{label: score}`` per row,
    one row by itself."""
    if state.route != TORCHSERVE:
        return rows
    return shape_rows([label_scores(row) for row in rows], state)
