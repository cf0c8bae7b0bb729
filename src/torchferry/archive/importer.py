"""Import a foreign model file into the model store: a plain ``.onnx``, a TorchScript ``.pt``,
or a TorchServe ``.mar`` (see :mod:`torchferry.archive.mar`).

Each file type is one importer function in ``IMPORTERS`` (suffix -> function). A function
reads the file, works out its signature (and, for archives of other servers, the handler and
extra files), and says which files the archive gets; the store writes and hashes them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from pydantic import ValidationError

from torchferry.archive.integrity import safe_relative
from torchferry.archive.manifest import (
    DEFAULT_GRAPH_FILES,
    MANIFEST_NAME,
    BatchingSpec,
    HandlerSpec,
    Manifest,
)
from torchferry.archive.store import Archive, ModelStore
from torchferry.errors import ArchiveError, TorchferryError
from torchferry.signature import NUMPY_TO_V2, ModelSignature, TensorSpec

#: Batch size of the random inputs a model is run on to learn its outputs.
PROBE_BATCH = 2


@dataclass(frozen=True)
class ImportOptions:
    """What the caller says besides the file."""

    inputs: Sequence[TensorSpec] | None = None
    output_names: Sequence[str] | None = None
    #: The handler the caller chose, if any (an importer's own choice is then only a default).
    handler: str | None = None
    #: Import a TorchServe archive whose handler is custom Python (kept, never run).
    trust_custom_handler: bool = False
    #: A private directory to unpack into; it lives until the archive is written.
    scratch: Path | None = None


@dataclass(frozen=True)
class Imported:
    """What an importer found: the runtime, the signature, and the files to copy."""

    runtime: str
    signature: ModelSignature
    #: Archive file name -> source file; the runtime's graph file is among them.
    files: dict[str, Path]
    source: str
    #: The handler the foreign format asks for, when it says (the caller's choice wins).
    handler: HandlerSpec | None = None
    #: Further files for the archive (labels, reference copies); the caller's files win.
    extra_files: Mapping[str, bytes | Path] = field(default_factory=dict)
    #: The model name the file gives, used when the caller gives none.
    name: str | None = None
    #: What the user should know about the import (printed by the CLI).
    notes: tuple[str, ...] = ()


Importer = Callable[[Path, ImportOptions], Imported]


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
        from torchferry.export.inputs import random_inputs

        feed = {n: t.numpy() for n, t in random_inputs(specs, PROBE_BATCH).items()}
        results = session.run([v.name for v in graph.output], feed)
        outputs = [
            spec
            or TensorSpec(
                name=v.name, datatype=NUMPY_TO_V2[np.asarray(r).dtype], shape=(-1, *np.shape(r)[1:])
            )
            for v, spec, r in zip(graph.output, outputs, results, strict=True)
        ]
    files = {DEFAULT_GRAPH_FILES["onnxruntime"]: path}
    for location in _external_files(model):
        files[location] = path.parent / location
    signature = ModelSignature(
        inputs=tuple(specs), outputs=tuple(o for o in outputs if o is not None)
    )
    return Imported(runtime="onnxruntime", signature=signature, files=files, source="import (onnx)")


# ---------------------------------------------------------------------------- TorchScript


def import_torchscript(path: Path, options: ImportOptions) -> Imported:
    """Load a ``torch.jit.save`` file and run it once on random inputs to learn its outputs."""
    inputs, output_names = options.inputs, options.output_names
    from torchferry.export.inputs import random_inputs
    from torchferry.export.outputs import flatten_outputs, output_names_for, output_specs

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
        runtime="torchscript",
        signature=signature,
        files={DEFAULT_GRAPH_FILES["torchscript"]: path},
        source="import (torchscript)",
    )


def import_mar(path: Path, options: ImportOptions) -> Imported:
    """A TorchServe model archive; see :mod:`torchferry.archive.mar` (imported when used)."""
    from torchferry.archive.mar import import_mar as read_mar

    return read_mar(path, options)


#: File suffix -> importer. A new foreign format is one function plus one line here.
IMPORTERS: dict[str, Importer] = {
    ".onnx": import_onnx,
    ".pt": import_torchscript,
    ".ts": import_torchscript,
    ".mar": import_mar,
}


def _handler_spec(
    imported: Imported, handler: str | None, config: Mapping[str, Any]
) -> HandlerSpec:
    """The caller's handler and config over the importer's (its config only for its handler)."""
    base = imported.handler or HandlerSpec()
    name = handler or base.name
    merged = dict(base.config) if name == base.name else {}
    merged.update(config)
    return HandlerSpec(name=name, config=merged)


def import_model(
    path: Path | str,
    *,
    name: str | None = None,
    store: ModelStore | Path | str,
    version: int | None = None,
    inputs: Sequence[TensorSpec] | None = None,
    output_names: Sequence[str] | None = None,
    handler: str | None = None,
    handler_config: dict[str, Any] | None = None,
    batching: BatchingSpec | None = None,
    extra_files: Mapping[str, bytes | Path] | None = None,
    trust_custom_handler: bool = False,
    report: Callable[[str], None] | None = None,
) -> Archive:
    """Import the model file at ``path`` as ``STORE/NAME/VERSION`` (the next version by default).

    ``.onnx``: the signature is read from the graph (``inputs`` may override shapes).
    ``.pt``/``.ts`` (TorchScript): ``inputs`` are required; outputs are found by running the
    model once on random inputs. ``.mar`` (TorchServe): see :mod:`torchferry.archive.mar`;
    the name defaults to the archive's ``modelName`` and the handler to the closest built-in.
    ``extra_files`` (e.g. ``labels.json``) are copied in. ``handler`` defaults to what the
    file asks for, else ``tensor``. ``report`` receives notes the user should read.
    """
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"cannot import {str(path)!r}: no such file")
    importer = IMPORTERS.get(path.suffix.lower())
    if importer is None:
        raise ArchiveError(
            f"cannot import {path.name}: unknown file type {path.suffix!r}; "
            f"supported: {', '.join(sorted(IMPORTERS))}"
        )
    model_store = store if isinstance(store, ModelStore) else ModelStore(store)
    model_store.root.mkdir(parents=True, exist_ok=True)
    # unpacked files stay next to the store (same disk) until the version is written
    with tempfile.TemporaryDirectory(prefix=".import-", dir=model_store.root) as scratch:
        options = ImportOptions(
            inputs=inputs,
            output_names=output_names,
            handler=handler,
            trust_custom_handler=trust_custom_handler,
            scratch=Path(scratch),
        )
        imported = importer(path, options)
        name = name or imported.name
        if not name:
            raise ArchiveError(f"cannot import {path.name}: give the model a name (--name)")
        files: dict[str, bytes | Path] = dict(imported.files)
        given = {safe_relative(k).as_posix(): v for k, v in (extra_files or {}).items()}
        for extra_name, content in {**imported.extra_files, **given}.items():
            relative = safe_relative(extra_name).as_posix()
            if relative in imported.files or relative == MANIFEST_NAME:
                raise ArchiveError(f"extra file {extra_name!r} would replace a file of the model")
            files[relative] = content if isinstance(content, bytes) else Path(content)
        for archive_name, source in files.items():
            if isinstance(source, Path) and not source.is_file():
                raise ArchiveError(
                    f"{path.name} needs {archive_name!r}, but {source} is not a file"
                )
        from torchferry.export.api import framework_versions

        try:
            manifest = Manifest(
                name=name,
                version=version if version is not None else model_store.next_version(name),
                runtime=imported.runtime,
                graphs={imported.runtime: DEFAULT_GRAPH_FILES[imported.runtime]},
                signature=imported.signature,
                handler=_handler_spec(imported, handler, handler_config or {}),
                batching=batching or BatchingSpec(),
                framework_versions=framework_versions(),
                source=imported.source,
            )
        except ValidationError as exc:
            raise ArchiveError(f"cannot import {path.name}: {exc}") from None

        def populate(staging: Path) -> None:
            for archive_name, source in files.items():
                target = staging / safe_relative(archive_name)
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(source, bytes):
                    target.write_bytes(source)
                else:
                    shutil.copyfile(source, target)

        archive = model_store.write(manifest, populate)
    if report is not None:
        for note in imported.notes:
            report(note)
    return archive
