"""The ``eager`` export format: the factory's source file and ``weights.safetensors``.

For models that neither tracing nor ONNX capture faithfully (Python control flow on tensor
values). Nothing is compiled: the archive carries the factory's one source file under
``code/`` (hashed like every file) and the weights; the manifest says ``runtime: "eager"``,
``graphs: {"eager": "weights.safetensors"}`` and ``factory: "code/FILE.py:NAME"``. The parity
check loads the archived model back exactly as the eager runtime will (from the copied
file, with the saved weights) and compares it with the original.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from torchferry.archive.code import archived_reference, split_reference
from torchferry.archive.formats import EAGER, WEIGHTS_FILE
from torchferry.archive.integrity import hash_file
from torchferry.archive.manifest import MANIFEST_NAME, Manifest
from torchferry.archive.store import Archive
from torchferry.errors import ArchiveError, ExportError
from torchferry.export.parity import Runner
from torchferry.runtimes.eager import EagerRuntime
from torchferry.signature import ModelSignature


def require_factory(factory: str | None) -> str:
    """The factory an eager export needs; ``ExportError`` when there is none."""
    if not factory:
        raise ExportError(
            "format 'eager' needs the model's factory, to rebuild the model where it is served: "
            "pass factory='FILE.py:NAME' or 'package.module:NAME' (a callable returning the "
            "nn.Module), or run torchferry export FILE.py:FACTORY --format eager"
        )
    return factory


def archive_factory(factory: str | None, work: Path) -> str:
    """Copy the factory's source file into ``work/code/`` and return the reference to record
    in the manifest (``code/FILE.py:NAME``)."""
    factory = require_factory(factory)
    try:
        reference, source = archived_reference(factory)
    except ArchiveError as exc:
        raise ExportError(f"factory {factory!r}: {exc.message}") from None
    target = work / split_reference(reference)[0]
    if target.exists():
        if target.read_bytes() != source.read_bytes():
            raise ExportError(
                f"factory {factory!r}: another file is already archived as "
                f"{split_reference(reference)[0]}; rename one of them"
            )
        return reference
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return reference


def eager_runner(
    work: Path, name: str, signature: ModelSignature, factory: str, device: str = "cpu"
) -> Runner:
    """Run the model as the eager runtime will: the archived factory and the saved weights
    from ``work``, loaded by :class:`EagerRuntime` (the exporter's own code, so trusted)."""
    if not (work / WEIGHTS_FILE).is_file():
        raise ExportError(
            "format 'eager' needs the weights in safetensors, and this model's state holds "
            "quantized tensors, which safetensors cannot store; export to TorchScript instead"
        )
    files = {
        path.relative_to(work).as_posix(): hash_file(path)
        for path in sorted(work.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }
    manifest = Manifest(
        name=name,
        version=1,
        runtime=EAGER,
        graphs={EAGER: WEIGHTS_FILE},
        signature=signature,
        files=files,
        factory=factory,
    )
    # leave torch's process-wide thread count as it is
    runtime = EagerRuntime(
        Archive(work, manifest), device=device, threads=torch.get_num_threads(), trust_code=True
    )
    try:
        runtime.load()
    except ArchiveError as exc:
        raise ExportError(
            f"the archived eager model cannot be loaded back: {exc.message}"
        ) from None
    names = signature.output_names

    def run(inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
        outputs = runtime.infer({key: tensor.numpy() for key, tensor in inputs.items()})
        return [outputs[output] for output in names]

    return run
