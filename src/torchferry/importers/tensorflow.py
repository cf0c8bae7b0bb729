"""Import a TensorFlow model: a Keras file (``.keras``, ``.h5``) or a SavedModel directory.

tf2onnx converts it to an ONNX graph, which the ``onnxruntime`` runtime serves like any
other. The signature is the model's own: a Keras model's inputs and outputs, or a
SavedModel's ``serving_default`` signature (names, datatypes, shapes; the batch dimension
becomes dynamic). The graph is then checked against TensorFlow on random inputs of batch
sizes 1 and 3 (:mod:`torchferry.export.parity`), as PyTorch exports are, and the reports go
into the manifest.

TensorFlow, Keras and tf2onnx are the optional extra ``torchferry[tensorflow]``, imported only
here. No Python from the file is run: Keras loads in ``safe_mode`` (a ``Lambda`` layer's
code is refused), and a SavedModel is a graph.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from torchferry.archive.formats import ONNX_FILE, ONNXRUNTIME
from torchferry.archive.manifest import ParityReport
from torchferry.codecs.datatypes import NUMPY_TO_V2
from torchferry.errors import ArchiveError, ExportError
from torchferry.export.inputs import INT_HIGH
from torchferry.export.parity import check_parity, one_line, onnx_runner
from torchferry.export.quiet import quiet
from torchferry.importers.base import Imported, ImportOptions
from torchferry.importers.graph import import_onnx
from torchferry.signature import ModelSignature, TensorSpec

#: The file that makes a directory a SavedModel.
SAVED_MODEL_FILE = "saved_model.pb"
#: The SavedModel signature served (the one ``tf.saved_model.save`` and Keras write).
SIGNATURE_KEY = "serving_default"
#: ONNX opset of the converted graph: one every ONNX Runtime since 1.14 runs in full.
OPSET = 17
KERAS_SUFFIXES = (".keras", ".h5")
_INSTALL = "pip install 'torchferry[tensorflow]'"
_REFERENCE = "TensorFlow"


@dataclass(frozen=True)
class _Loaded:
    """A TensorFlow model as the import needs it: ``function`` takes the inputs' tensors in
    signature order and returns the outputs by name. tf2onnx converts it (a ``tf.function``
    returning a dict names the graph's outputs after its keys), and parity runs it."""

    kind: str
    inputs: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]
    #: The input signature to trace with: the model's dtypes, dynamic where -1.
    tensor_specs: tuple[Any, ...]
    function: Callable[..., Mapping[str, Any]]


def _modules(path: Path) -> tuple[ModuleType, ModuleType]:
    """TensorFlow and tf2onnx, imported with their C++ chatter off."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # INFO and WARNING lines of TF's C++
    # Keras 3 runs on the backend this names; tf2onnx needs TensorFlow's
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:
        raise ArchiveError(
            f"importing {path.name} needs TensorFlow and tf2onnx ({exc.name} is missing): "
            f"{_INSTALL}"
        ) from None
    except Exception as exc:  # installed, but broken: a protobuf or numpy version clash
        raise ArchiveError(
            f"importing {path.name} needs TensorFlow and tf2onnx, which fail to import here "
            f"({one_line(exc)}): {_INSTALL} in an environment of its own"
        ) from exc
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    return tf, tf2onnx


def _spec(tf: ModuleType, name: str, shape: Any, dtype: Any, what: str) -> TensorSpec:
    """A V2 spec of a TensorFlow tensor; dim 0 is the batch dimension, unknown dims are -1."""
    tf_dtype = tf.as_dtype(dtype)
    try:
        datatype = NUMPY_TO_V2[np.dtype(tf_dtype.as_numpy_dtype)]
    except (KeyError, TypeError):
        raise ArchiveError(
            f"{what} {name!r} has TensorFlow type {tf_dtype.name}, which has no V2 datatype"
        ) from None
    tensor_shape = tf.TensorShape(shape)
    if tensor_shape.rank is None:
        raise ArchiveError(f"{what} {name!r} has no known rank; only tensors of fixed rank serve")
    dims = [d if d is not None and d > 0 else -1 for d in tensor_shape.as_list()]
    if not dims:
        raise ArchiveError(f"{what} {name!r} is a scalar; dim 0 must be the batch dimension")
    if dims[0] != -1:  # requests are batched: the model must take any number of rows
        raise ArchiveError(
            f"{what} {name!r} has a fixed batch dimension ({dims[0]} in {tensor_shape}); "
            "dim 0 must be the batch dimension, of any size: save the model with None there"
        )
    return TensorSpec(name=name, datatype=datatype, shape=tuple(dims))


def _tf_specs(
    tf: ModuleType, specs: Sequence[TensorSpec], dtypes: Sequence[Any]
) -> tuple[Any, ...]:
    return tuple(
        tf.TensorSpec([None if d < 0 else d for d in spec.shape], dtype, name=spec.name)
        for spec, dtype in zip(specs, dtypes, strict=True)
    )


def _keras_output_names(model: Any, count: int) -> tuple[str, ...]:
    """A functional model's output names (its output layers'); a Sequential model's, its last
    layer's; else ``output_0``, ``output_1``..., as Keras' ``model.export`` names them."""
    names = getattr(model, "output_names", None)
    if names and len(names) == count:
        return tuple(names)
    if count == 1 and getattr(model, "layers", None):
        return (model.layers[-1].name,)
    return tuple(f"output_{i}" for i in range(count))


def _keras(path: Path, tf: ModuleType) -> _Loaded:
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ArchiveError(
            f"importing {path.name} needs Keras on TensorFlow; it runs on "
            f"{keras.backend.backend()!r} here (KERAS_BACKEND)"
        )
    try:
        with quiet():
            model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, OSError, TypeError... for bad files
        if "safe_mode" in str(exc):  # Keras' refusal of a Lambda layer's Python
            raise ArchiveError(
                f"Keras refuses to load {path.name} in safe mode: it has a Lambda layer, whose "
                "Python function would run on load. torchferry never runs Python from a model "
                "file: rebuild the model from built-in layers"
            ) from exc
        raise ArchiveError(f"Keras cannot load {path.name}: {one_line(exc)}") from exc
    try:
        tensors, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        tensors, outputs = [], []
    if not tensors or not outputs:
        raise ArchiveError(
            f"{path.name}: the Keras model does not record its inputs and outputs (a "
            "subclassed model never built on keras.Input); save a functional or Sequential "
            "model"
        )
    inputs = tuple(_spec(tf, t.name, t.shape, t.dtype, "input") for t in tensors)
    output_names = _keras_output_names(model, len(outputs))

    def function(*args: Any) -> Mapping[str, Any]:
        result = model(list(args) if len(args) > 1 else args[0], training=False)
        # the structure's leaves in model.outputs' order (dicts by sorted key, as Keras flattens)
        return dict(zip(output_names, keras.tree.flatten(result), strict=True))

    kind = "keras" if path.suffix.lower() == ".keras" else "keras h5"
    specs = _tf_specs(tf, inputs, [t.dtype for t in tensors])
    return _Loaded(kind, inputs, output_names, specs, function)


def _saved_model(path: Path, tf: ModuleType) -> _Loaded:
    try:
        with quiet():
            loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow's own error types
        raise ArchiveError(
            f"TensorFlow cannot load the SavedModel {path}: {one_line(exc)}"
        ) from exc
    signatures = dict(loaded.signatures)
    if SIGNATURE_KEY not in signatures:
        raise ArchiveError(
            f"the SavedModel {path} has no {SIGNATURE_KEY!r} signature to serve; it has "
            f"{sorted(signatures) or 'none'} (save it with tf.saved_model.save(..., "
            "signatures=...) or Keras' model.export)"
        )
    signature = signatures[SIGNATURE_KEY]
    positional, named = signature.structured_input_signature
    outputs = signature.structured_outputs
    if positional or not named or not isinstance(outputs, Mapping):
        raise ArchiveError(
            f"the SavedModel {path}: signature {SIGNATURE_KEY!r} must take and return "
            "tensors by name"
        )
    # a loaded signature's inputs and outputs come in no fixed order (protobuf maps): by name
    names = sorted(named)
    inputs = tuple(_spec(tf, n, named[n].shape, named[n].dtype, "input") for n in names)

    def function(*args: Any) -> Mapping[str, Any]:
        # ``loaded`` owns the variables the signature reads: kept alive with this closure
        return loaded.signatures[SIGNATURE_KEY](**dict(zip(names, args, strict=True)))

    specs = _tf_specs(tf, inputs, [named[n].dtype for n in names])
    return _Loaded("tensorflow savedmodel", inputs, tuple(sorted(outputs)), specs, function)


def is_saved_model(path: Path) -> bool:
    return path.is_dir() and (path / SAVED_MODEL_FILE).is_file()


def import_tensorflow(path: Path, options: ImportOptions) -> Imported:
    """Convert a Keras file or a SavedModel directory to ONNX and check it against TensorFlow."""
    if options.output_names:
        raise ArchiveError(f"{path.name}: the model names its own outputs; names cannot be given")
    if options.scratch is None:
        raise ArchiveError("a TensorFlow import needs a scratch directory to convert into")
    tf, tf2onnx = _modules(path)
    loaded = _saved_model(path, tf) if path.is_dir() else _keras(path, tf)
    graph = options.scratch / ONNX_FILE
    try:
        with quiet():
            tf2onnx.convert.from_function(
                tf.function(loaded.function),
                input_signature=list(loaded.tensor_specs),
                opset=OPSET,
                output_path=str(graph),
            )
    except Exception as exc:  # tf2onnx raises whatever the failing op's handler raised
        raise ArchiveError(
            f"tf2onnx {tf2onnx.__version__} cannot convert {path.name} to ONNX opset {OPSET}: "
            f"{one_line(exc)}"
        ) from exc
    # the graph's names and datatypes must be the model's; --input specs may narrow shapes
    from_graph = import_onnx(graph, ImportOptions(inputs=options.inputs or loaded.inputs))
    if set(from_graph.signature.output_names) != set(loaded.output_names):
        raise ArchiveError(
            f"{path.name}: the converted graph's outputs {from_graph.signature.output_names} "
            f"are not the model's {list(loaded.output_names)}"
        )
    # in the model's order, which the converted graph need not keep
    signature = from_graph.signature.model_copy(
        update={
            "inputs": _ordered(from_graph.signature.inputs, [s.name for s in loaded.inputs]),
            "outputs": _ordered(from_graph.signature.outputs, list(loaded.output_names)),
        }
    )
    reports = _check(loaded, tf, signature, graph, path)
    return Imported(
        runtime=ONNXRUNTIME,
        signature=signature,
        files={ONNX_FILE: graph},
        source=f"import ({loaded.kind})",
        parity=tuple(reports),
        framework_versions={"tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__},
        notes=(f"converted by tf2onnx {tf2onnx.__version__} to ONNX opset {OPSET}",),
    )


def _ordered(specs: Sequence[TensorSpec], order: list[str]) -> tuple[TensorSpec, ...]:
    return tuple(sorted(specs, key=lambda s: order.index(s.name)))


def _check(
    loaded: _Loaded, tf: ModuleType, signature: ModelSignature, graph: Path, path: Path
) -> list[ParityReport]:
    """The ONNX graph on ONNX Runtime against the model on TensorFlow, at batch 1 and 3."""

    def tensorflow(inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
        tensors = [tf.constant(inputs[spec.name].numpy()) for spec in loaded.inputs]
        result = loaded.function(*tensors)
        return [np.asarray(result[name]) for name in signature.output_names]

    try:
        return check_parity(
            tensorflow,
            signature,
            {"onnx": onnx_runner(graph, signature)},
            reference_name=_REFERENCE,
        )
    except ExportError as exc:
        integers = [s.name for s in signature.inputs if s.datatype.startswith(("INT", "UINT"))]
        hint = (
            f" (integer inputs {integers} were drawn from [0, {INT_HIGH}): a model that needs "
            "other values, such as indices into a smaller table, cannot be checked this way)"
            if integers and f"{_REFERENCE} failed" in exc.message
            else ""
        )
        raise ArchiveError(f"{path.name}: {exc.message}{hint}") from None
