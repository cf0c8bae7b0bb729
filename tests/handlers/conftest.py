"""Archives for handler tests: a manifest and a dummy graph, written through ``ModelStore``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from torchferry.archive import Archive, HandlerSpec, Manifest, ModelStore
from torchferry.signature import ModelSignature, TensorSpec

MakeArchive = Callable[..., Archive]


@pytest.fixture
def make_archive(tmp_path: Path) -> MakeArchive:
    counter = iter(range(1, 1000))

    def make(
        inputs: list[tuple[str, str, tuple[int, ...]]],
        outputs: list[tuple[str, str, tuple[int, ...]]] = (("y", "FP32", (-1, 10)),),
        handler: str = "tensor",
        config: dict[str, Any] | None = None,
        files: dict[str, Any] | None = None,
    ) -> Archive:
        signature = ModelSignature(
            inputs=tuple(TensorSpec(name=n, datatype=d, shape=s) for n, d, s in inputs),
            outputs=tuple(TensorSpec(name=n, datatype=d, shape=s) for n, d, s in outputs),
        )
        manifest = Manifest(
            name="m",
            version=next(counter),
            runtime="onnxruntime",
            graphs={"onnxruntime": "model.onnx"},
            signature=signature,
            handler=HandlerSpec(name=handler, config=config or {}),
        )

        def populate(directory: Path) -> None:
            (directory / "model.onnx").write_bytes(b"not a real graph")
            for name, content in (files or {}).items():
                data = content if isinstance(content, bytes) else json.dumps(content).encode()
                (directory / name).parent.mkdir(parents=True, exist_ok=True)
                (directory / name).write_bytes(data)

        return ModelStore(tmp_path / "store").write(manifest, populate)

    return make
