"""The user's evaluation data: one array per model input, named as the inputs, and optional
``labels``; read from a ``.npz`` without pickle and checked against the model's signature."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchferry.archive.integrity import hash_file
from torchferry.codecs.datatypes import V2_TO_NUMPY
from torchferry.errors import InvalidInput
from torchferry.signature import ModelSignature

LABELS = "labels"
Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class EvalData:
    """The user's data: one array per model input (rows on dim 0) and optional labels."""

    inputs: Arrays
    labels: np.ndarray | None
    rows: int
    #: The file's name ("data" for arrays given in memory) and SHA-256.
    source: str
    sha256: str | None = None

    def rows_slice(self, start: int, stop: int) -> Arrays:
        return {name: array[start:stop] for name, array in self.inputs.items()}

    def batch(self, size: int) -> Arrays:
        """``size`` rows, cycling through the data when it has fewer."""
        if size <= self.rows:
            return self.rows_slice(0, size)
        index = np.arange(size) % self.rows
        return {name: np.ascontiguousarray(a[index]) for name, a in self.inputs.items()}


def _read_npz(path: Path) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise InvalidInput(f"data file {str(path)!r} does not exist") from None
    except ValueError as exc:  # object arrays need pickle, which is never allowed
        raise InvalidInput(f"data file {str(path)!r} cannot be read safely: {exc}") from None
    except (OSError, EOFError) as exc:
        raise InvalidInput(f"data file {str(path)!r} is not a readable .npz file: {exc}") from None


def _check_input(
    name: str, array: np.ndarray, signature: ModelSignature, source: str
) -> np.ndarray:
    spec = next(s for s in signature.inputs if s.name == name)
    if array.ndim != len(spec.shape):
        raise InvalidInput(
            f"{source}: array {name!r} has shape {list(array.shape)}; input {name!r} expects "
            f"{list(spec.shape)} (dim 0 is the rows)"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if axis and want != -1 and want != got:
            raise InvalidInput(
                f"{source}: array {name!r} has shape {list(array.shape)}; input {name!r} "
                f"expects {list(spec.shape)} (dim 0 is the rows)"
            )
    wanted = V2_TO_NUMPY[spec.datatype]
    if spec.datatype == "BYTES" and array.dtype.kind in "US":
        encoded = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.ravel()]
        return np.asarray(encoded, dtype=object).reshape(array.shape)
    if array.dtype != wanted:
        if not np.can_cast(array.dtype, wanted, casting="same_kind"):
            raise InvalidInput(
                f"{source}: array {name!r} has dtype {array.dtype}; input {name!r} is "
                f"{spec.datatype} ({wanted})"
            )
        array = array.astype(wanted)
    return np.ascontiguousarray(array)


def load_data(data: Arrays | Path | str, signature: ModelSignature) -> EvalData:
    """Read and check the evaluation data against the model's inputs.

    ``data`` is a ``.npz`` file (read without pickle) or a dict, holding one array per model
    input, named as the inputs, and optionally ``labels`` (integer classes, one per row).
    Arrays are cast to the inputs' dtypes where that keeps their kind (float64 -> float32).
    """
    if isinstance(data, (str, Path)):
        source = Path(data).name
        arrays = _read_npz(Path(data))
        digest: str | None = hash_file(Path(data)).sha256
    else:
        source, digest = "data", None
        arrays = {name: np.asarray(array) for name, array in data.items()}
    expected = signature.input_names
    given = [name for name in arrays if name != LABELS]
    missing = [name for name in expected if name not in given]
    unexpected = [name for name in given if name not in expected]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing {missing}")
        if unexpected:
            problems.append(f"unexpected {unexpected}")
        raise InvalidInput(
            f"{source} must hold one array per model input, named as the inputs "
            f"{expected} (and optionally {LABELS!r}); it holds {sorted(arrays)}: "
            + ", ".join(problems)
        )
    inputs = {name: _check_input(name, arrays[name], signature, source) for name in expected}
    rows = {name: array.shape[0] for name, array in inputs.items()}
    if len(set(rows.values())) != 1:
        raise InvalidInput(f"{source}: the inputs' arrays differ in rows (dim 0): {rows}")
    count = next(iter(rows.values()))
    if count == 0:
        raise InvalidInput(f"{source}: the arrays hold no rows")
    labels = arrays.get(LABELS)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu" or labels.shape[:1] != (count,):
            raise InvalidInput(
                f"{source}: {LABELS!r} must hold one integer class per row ({count} rows); "
                f"it has dtype {labels.dtype} and shape {list(labels.shape)}"
            )
    return EvalData(inputs=inputs, labels=labels, rows=count, source=source, sha256=digest)
