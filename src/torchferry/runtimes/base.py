"""The ``Runtime`` interface every engine implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from torchferry.archive.store import Archive
from torchferry.cores import default_threads


class Runtime(ABC):
    """Runs one model version: named numpy arrays in, named numpy arrays out.

    ``infer`` is called from a worker thread, one call at a time per instance, and must
    release the GIL while computing (ONNX Runtime and PyTorch both do).
    """

    #: The name manifests use to choose this runtime (``Manifest.runtime``).
    name: ClassVar[str]
    #: The V2 ``platform`` string reported in model metadata.
    platform: ClassVar[str]

    def __init__(
        self,
        archive: Archive,
        device: str = "cpu",
        threads: int | None = None,
        *,
        trust_code: bool = False,
        share_weights: bool = True,
    ) -> None:
        self.archive = archive
        self.device = device
        self.threads = threads or default_threads()
        #: Whether the operator lets Python carried in the archive run (``--trust-code``);
        #: only engines that run such code (eager) read it.
        self.trust_code = trust_code
        #: Whether workers may share one mapped copy of the weights where the engine can
        #: (``--no-share-weights`` turns it off); engines that cannot ignore it.
        self.share_weights = share_weights

    @abstractmethod
    def load(self) -> None:
        """Load the graph; called once before the first ``infer``."""

    def check(self) -> None:  # noqa: B027 - optional hook
        """Refuse now what ``load`` would refuse for the operator's settings (code that is
        not trusted), without loading: a memory budget loads on the first request."""

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Inputs are already validated against the signature."""

    def shares_weights(self) -> bool:
        """Whether this runtime should map its weights from one shared copy, where its
        engine can: unless the server (``--no-share-weights``) or the manifest
        (``runtime_options.share_weights: false``) says no; only on the CPU (a GPU holds
        its own copy whatever the host does)."""
        option = self.archive.manifest.runtime_options.get("share_weights", True)
        return self.share_weights and bool(option) and self.device == "cpu"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine's resources."""
