"""Eager PyTorch: the archive's ``nn.Module`` rebuilt from its factory and its weights.

For models whose control flow neither tracing nor ONNX capture (a Python ``if`` on tensor
values). The factory is Python carried in the archive (``code/FILE.py:callable``, hashed
like every file, see :mod:`torchferry.archive.code`); it runs only when the operator trusts
the archive (``--trust-code``). The weights are ``weights.safetensors``, never unpickled.

:func:`load_weights` is also how ``torchferry optimize`` rebuilds an archive's eager model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from torchferry.archive.code import is_archived_reference, load_archived, untrusted_code
from torchferry.archive.formats import EAGER, WEIGHTS_FILE
from torchferry.archive.store import Archive
from torchferry.errors import ArchiveError, ModelError, ModelNotReady
from torchferry.runtimes.base import Runtime
from torchferry.runtimes.torch_io import PinnedInputs, to_arrays, to_tensors, torch_device
from torchferry.runtimes.torch_shared import map_archive_weights


def _label(archive: Archive) -> str:
    return f"model {archive.manifest.name!r} version {archive.manifest.version}"


def load_weights(model: nn.Module, path: Path, label: str = "model") -> nn.Module:
    """Load ``weights.safetensors`` into ``model`` (every key, every shape) and return it in
    eval mode."""
    try:
        safetensors.torch.load_model(model, str(path), strict=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArchiveError(
            f"{label}: {path.name} does not fit the factory's model: {first}"
        ) from exc
    return model.eval()


def call_factory(factory: Any, reference: str, label: str = "model") -> nn.Module:
    """``factory()`` (or ``factory`` itself when it is a module) as an ``nn.Module``."""
    if isinstance(factory, nn.Module):
        return factory
    if not callable(factory):
        raise ArchiveError(f"{label}: factory {reference!r} is a {type(factory).__name__}")
    try:
        model = factory()
    except Exception as exc:
        raise ArchiveError(
            f"{label}: calling factory {reference!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ArchiveError(
            f"{label}: factory {reference!r} returned a {type(model).__name__}, not an nn.Module"
        )
    return model


def weights_file(archive: Archive) -> str:
    """The archive's weights: the eager ``graphs`` entry, else ``weights.safetensors``."""
    manifest = archive.manifest
    name = manifest.graphs.get(EAGER, WEIGHTS_FILE)
    if name not in manifest.files:
        raise ArchiveError(f"{_label(archive)} has no {name} to rebuild its eager model from")
    return name


def load_eager_model(archive: Archive, *, trust_code: bool) -> nn.Module:
    """The archive's eager model: its archived factory, called, with its weights loaded.

    Refuses (``UntrustedCode``) unless ``trust_code``; refuses a factory that is not carried
    in the archive, since nothing outside the archive's hashed files may run.
    """
    label = _label(archive)
    reference = archive.manifest.factory
    if not reference:
        raise ArchiveError(f"{label} has no factory to rebuild its eager model from")
    if not is_archived_reference(reference):
        raise ArchiveError(
            f"{label}: its factory {reference!r} is not carried in the archive (code/FILE.py:"
            "NAME), so the eager runtime cannot run it; export again with --format eager"
        )
    factory = load_archived(archive, reference, trust_code=trust_code, what="eager model")
    weights = weights_file(archive)
    return load_weights(call_factory(factory, reference, label), archive.file(weights), label)


class EagerRuntime(Runtime):
    name = EAGER
    platform = "pytorch_eager"
    module: nn.Module | None = None
    #: The CUDA path's reused pinned input buffers; None on the CPU.
    pinned: PinnedInputs | None = None

    def load(self) -> None:
        device = torch_device(self.device)
        # torch's thread count is process-wide; the last model loaded sets it.
        torch.set_num_threads(self.threads)
        model = load_eager_model(self.archive, trust_code=self.trust_code)
        try:
            self.module = model.to(device)
        except Exception as exc:
            raise ArchiveError(
                f"{_label(self.archive)}: cannot move to {self.device}: {exc}"
            ) from exc
        self.pinned = PinnedInputs(device) if device.type == "cuda" else None
        #: Bytes of weights mapped from the archive's safetensors, shared between workers.
        self.mapped_bytes = map_archive_weights(self, self.module, weights_file(self.archive))
        signature = self.archive.manifest.signature
        self.input_names = signature.input_names
        self.output_names = signature.output_names

    def check(self) -> None:
        reference = self.archive.manifest.factory
        if reference and not self.trust_code:
            raise untrusted_code(self.archive, reference, "eager model")
        torch_device(self.device)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        module = self.module
        if module is None:
            raise ModelNotReady(f"{_label(self.archive)} is not loaded")
        pinned = self.pinned
        if pinned is None:
            args = to_tensors(inputs, self.input_names, self.device)
        else:
            args = pinned.to_device(inputs, self.input_names)
        with torch.inference_mode():
            try:
                result = module(*args)
            except Exception as exc:  # the model's own failure, with its own message
                raise ModelError(
                    f"{type(exc).__name__}: {exc}", log_message=type(exc).__name__
                ) from exc
        return to_arrays(result, self.output_names)

    def close(self) -> None:
        self.module = None
        self.pinned = None
