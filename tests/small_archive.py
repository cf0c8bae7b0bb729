"""A small archive written through ``ModelStore.write`` (a graph file that is not a real
graph, and a nested file): for tests of hashing, integrity and signing, which never load it."""

from __future__ import annotations

from pathlib import Path

from torchferry.archive import Archive, Manifest, ModelStore
from torchferry.signature import ModelSignature, TensorSpec


def write_small_archive(store: ModelStore, name: str = "m") -> Archive:
    spec = TensorSpec(name="x", datatype="FP32", shape=(-1, 2))
    manifest = Manifest(
        name=name,
        version=store.next_version(name),
        runtime="onnxruntime",
        graphs={"onnxruntime": "model.onnx"},
        signature=ModelSignature(inputs=(spec,), outputs=(spec,)),
    )

    def populate(directory: Path) -> None:
        (directory / "model.onnx").write_bytes(b"graph bytes")
        (directory / "extra").mkdir()
        (directory / "extra" / "labels.json").write_text('["a"]')

    return store.write(manifest, populate)
