"""Import a bare graph: an ONNX file (``.onnx``) or a TorchScript file (``.pt``, ``.ts``).

ONNX: the signature is read from the graph (symbolic or missing dims, and dim 0, become
``-1``); outputs whose shape the graph omits are learned by running it once. TorchScript:
the file does not record its inputs, so the caller gives them; outputs are learned by running
the module once on random inputs (``torch.jit.load``, never unpickling).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from torchferry.archive.formats import ONNX_FILE, ONNXRUNTIME, TORCHSCRIPT, TORCHSCRIPT_FILE
from torchferry.archive.integrity import safe_relative
from torchferry.codecs.datatypes import NUMPY_TO_V2
from torchferry.errors import ArchiveError, TorchferryError
from torchferry.export.inputs import random_inputs
from torchferry.export.outputs import flatten_outputs, output_names_for, output_specs
from torchferry.importers.base import PROBE_BATCH, Imported, ImportOptions
from torchferry.signature import ModelSignature, TensorSpec

# ----------------------------------------------------------------------------------- ONNX


def _onnx_datatype(elem_type: int, what: str) -> str:
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
        return NUMPY_TO_V2[dtype]
    except (KeyError, TypeError, ValueError):
        type_name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "UNDEFINED"
        raise ArchiveError(f"{what} has ONNX type {type_name}, which has no V2 datatype") from None


def _onnx_spec(value: onnx.ValueInfoProto, what: str) -> TensorSpec | None:
    """The spec of a graph input or output; ``None`` when the graph does not give its rank."""
    if not value.type.HasField("tensor_type"):
        raise ArchiveError(f"{what} {value.name!r} is not a tensor; only tensors are supported")
    tensor_type = value.type.tensor_type
    datatype = _onnx_datatype(tensor_type.elem_type, f"{what} {value.name!r}")
    if not tensor_type.HasField("shape"):
        return None
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
        for d in tensor_type.shape.dim
    ]
    if not dims:
        raise ArchiveError(f"{what} {value.name!r} is a scalar; dim 0 must be the batch dimension")
    return TensorSpec(name=value.name, datatype=datatype, shape=(-1, *dims[1:]))


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in ``graph``: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graph_tensors(subgraph)


def _external_files(model: onnx.ModelProto) -> list[str]:
    locations: set[str] = set()
    for tensor in _graph_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    for location in locations:
        safe_relative(location)
    return sorted(locations)


def _merge_inputs(
    found: list[TensorSpec | None], graph_names: list[str], given: Sequence[TensorSpec] | None
) -> list[TensorSpec]:
    if given is None:
        unknown = [n for n, s in zip(graph_names, found, strict=True) if s is None]
        if unknown:
            raise ArchiveError(
                f"the graph does not give the shape of input {unknown[0]!r}; pass --input specs"
            )
        return [s for s in found if s is not None]
    by_name = {s.name: s for s in given}
    if sorted(by_name) != sorted(graph_names):
        raise ArchiveError(
            f"--input names {sorted(by_name)} differ from the graph's inputs {graph_names}"
        )
    merged = []
    for name, spec in zip(graph_names, found, strict=True):
        want = by_name[name]
        if spec is not None and spec.datatype != want.datatype:
            raise ArchiveError(
                f"input {name!r}: given datatype {want.datatype}, the graph has {spec.datatype}"
            )
        merged.append(want.model_copy(update={"shape": (-1, *want.shape[1:])}))
    return merged


def import_onnx(path: Path, options: ImportOptions) -> Imported:
    """Read an ONNX graph's signature; symbolic or missing dims and dim 0 become ``-1``."""
    inputs, output_names = options.inputs, options.output_names
    try:
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ArchiveError(f"{path} is not a valid ONNX model: {exc}") from exc
    if output_names:
        raise ArchiveError("an ONNX graph names its own outputs; output names cannot be given")
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    graph_inputs = [v for v in graph.input if v.name not in initializers]
    specs = _merge_inputs(
        [_onnx_spec(v, "input") for v in graph_inputs], [v.name for v in graph_inputs], inputs
    )
    outputs = [_onnx_spec(v, "output") for v in graph.output]
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArchiveError(f"ONNX Runtime cannot load {path}: {exc}") from exc
    if any(o is None for o in outputs):
        feed = {n: t.numpy() for n, t in random_inputs(specs, PROBE_BATCH).items()}
        results = session.run([v.name for v in graph.output], feed)
        outputs = [
            spec
            or TensorSpec(
                name=v.name, datatype=NUMPY_TO_V2[np.asarray(r).dtype], shape=(-1, *np.shape(r)[1:])
            )
            for v, spec, r in zip(graph.output, outputs, results, strict=True)
        ]
    files = {ONNX_FILE: path}
    for location in _external_files(model):
        files[location] = path.parent / location
    signature = ModelSignature(
        inputs=tuple(specs), outputs=tuple(o for o in outputs if o is not None)
    )
    return Imported(runtime=ONNXRUNTIME, signature=signature, files=files, source="import (onnx)")


# ---------------------------------------------------------------------------- TorchScript


def import_torchscript(path: Path, options: ImportOptions) -> Imported:
    """Load a ``torch.jit.save`` file and run it once on random inputs to learn its outputs."""
    inputs, output_names = options.inputs, options.output_names
    if not inputs:
        raise ArchiveError(
            f"{path.name}: a TorchScript file does not record its inputs; give them, "
            "e.g. --input x:-1,3,224,224:float32"
        )
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArchiveError(
            f"{path} is not a TorchScript file (torch.jit.save); a pickled model or state_dict "
            f"cannot be imported: {first}"
        ) from exc
    specs = [s.model_copy(update={"shape": (-1, *s.shape[1:])}) for s in inputs]
    try:
        probe = random_inputs(specs, PROBE_BATCH)
        with torch.no_grad():
            result = module(*probe.values())
        names = output_names_for(result, output_names)
        tensors = flatten_outputs(result, names)
        outputs = output_specs(names, tensors, PROBE_BATCH)
    except TorchferryError as exc:
        raise ArchiveError(f"{path.name}: {exc.message}") from None
    except Exception as exc:
        raise ArchiveError(
            f"{path.name} failed on random inputs of batch size {PROBE_BATCH} matching "
            f"{[s.name for s in specs]}: {type(exc).__name__}: {exc}"
        ) from exc
    signature = ModelSignature(inputs=tuple(specs), outputs=tuple(outputs))
    return Imported(
        runtime=TORCHSCRIPT,
        signature=signature,
        files={TORCHSCRIPT_FILE: path},
        source="import (torchscript)",
    )
