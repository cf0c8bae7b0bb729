"""The handler API: Python around a model, for the payload routes (``/predict`` and
TorchServe's ``/predictions``).

A handler is a class with three methods, in the spirit of LitServe's ``LitAPI``::

    from torchferry import Handler

    class Embedder(Handler):
        def setup(self, ctx): ...                   # once per loaded model version
        def preprocess(self, request): ...          # -> (inputs with a batch dim, state)
        def postprocess(self, outputs, state): ...  # this request's outputs -> a JSON-able answer

``preprocess`` and ``postprocess`` run on the server's preprocessing thread pool, never on
the event loop, possibly for several requests at once: keep per-request data in ``state``,
not on ``self``. Between them the request's inputs are validated against the signature and
queued on the batcher, where they may share a batch with other requests; ``postprocess``
gets only this request's rows. Raise :class:`torchferry.InvalidInput` for a client's
mistake (400); any other exception answers 500 with its message.

The tensor protocols (V2, V1, gRPC) never call a handler: they are tensors in, tensors out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from torchferry.codecs.jsonio import loads
from torchferry.signature import ModelSignature

#: Media types whose body ``HandlerRequest.json`` parses.
_JSON_MEDIA = ("application/json", "text/json")


@dataclass(frozen=True)
class HandlerContext:
    """What ``setup`` gets: the model version's files, handler config and signature."""

    #: The archive's files by their name in the archive (``"vocab.json"``), as paths.
    files: Mapping[str, Path]
    #: The handler's config from the manifest (``torchferry export --handler-config``).
    config: Mapping[str, Any]
    signature: ModelSignature
    model_name: str
    model_version: int


@dataclass
class HandlerRequest:
    """One request to a payload route, as the handler sees it."""

    #: The raw body (empty for a multipart request, whose parts are in ``files`` and ``form``).
    body: bytes = b""
    #: The ``Content-Type`` header as sent, or ``""``.
    content_type: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Uploaded files by multipart field name, in the order they came.
    files: Mapping[str, list[bytes]] = field(default_factory=dict)
    #: Text fields of a multipart body by name.
    form: Mapping[str, list[str]] = field(default_factory=dict)
    #: The route that received it: ``"predict"`` or ``"torchserve"``. Built-in handlers shape
    #: their answer as each route's clients expect; yours may ignore it.
    route: str = "predict"

    @property
    def media_type(self) -> str:
        """The content type without parameters, lower case (``"image/png"``)."""
        return self.content_type.split(";", 1)[0].strip().lower()

    @property
    def is_json(self) -> bool:
        media = self.media_type
        return media in _JSON_MEDIA or media.endswith("+json")

    @cached_property
    def json(self) -> Any:
        """The parsed body when it is JSON (by content type), else None.

        Parsed on first use, on the thread that asks (the preprocessing pool), so that a large
        JSON body never blocks the event loop. Invalid JSON raises ``InvalidInput`` (400).
        """
        if not self.is_json:
            return None
        return loads(self.body)


class Handler:
    """Base class of every handler, built-in or yours.

    A handler is created with no arguments, then ``setup`` is called once with the model's
    :class:`HandlerContext`; ``preprocess`` and ``postprocess`` are yours to write.
    """

    #: The name built-in and entry-point handlers are registered under.
    name: ClassVar[str] = ""

    def setup(self, ctx: HandlerContext) -> None:
        """Load what every request needs (a tokenizer, labels); runs once per model version."""
        self.ctx = ctx

    def preprocess(self, request: HandlerRequest) -> tuple[dict[str, np.ndarray], Any]:
        """One request to ``(inputs, state)``: named arrays whose dimension 0 is the batch, and
        anything ``postprocess`` needs to answer this request (None when nothing)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement preprocess")

    def postprocess(self, outputs: dict[str, np.ndarray], state: Any) -> Any:
        """This request's outputs (its own rows only) to a JSON-able answer."""
        raise NotImplementedError(f"{type(self).__name__} does not implement postprocess")
