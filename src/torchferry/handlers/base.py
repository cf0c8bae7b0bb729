"""The ``Handler`` interface: a request's payload to model tensors, and model tensors to answers.

Handlers serve the payload-level protocols (``/predict``, and TorchServe's API later). The
tensor-level protocols (V2, V1) hand tensors to the model directly and skip ``preprocess``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from torchferry.archive.store import Archive


@dataclass(frozen=True)
class HandlerInput:
    """What a payload protocol received: JSON ``data``, or raw uploaded files (one row each)."""

    data: Any = None
    blobs: list[bytes] = field(default_factory=list)


class Handler(ABC):
    """Per-model pre- and post-processing.

    ``preprocess`` runs on a worker thread (it may decode images); both methods must be safe
    to call from several threads at once.
    """

    name: ClassVar[str]

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.signature = archive.manifest.signature
        self.config: dict[str, Any] = dict(archive.manifest.handler.config)

    @abstractmethod
    def preprocess(self, request: HandlerInput) -> dict[str, np.ndarray]:
        """Turn one request into named input arrays whose dimension 0 is the batch."""

    @abstractmethod
    def postprocess(self, outputs: dict[str, np.ndarray]) -> list[Any]:
        """Turn the model's outputs for one request into one JSON-able answer per row."""
