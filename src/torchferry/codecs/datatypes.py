"""The one table between V2 datatypes (``FP32``, ``BYTES``...) and numpy dtypes.

``BYTES`` tensors are numpy object arrays whose elements are ``bytes`` or ``str`` (UTF-8
text): JSON decoders leave strings as ``str`` and raw decoders give ``bytes``, and each
encoder converts an element at most once, at the edge.
"""

from __future__ import annotations

import numpy as np

from torchferry.errors import InvalidInput, ModelError

#: V2 datatype name -> numpy dtype. BF16 has no numpy dtype and is left to later issues.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
NUMPY_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}
#: Short names accepted on the command line (``x:-1,3,224,224:float32``).
ALIASES: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "half": "FP16",
    "float32": "FP32",
    "float": "FP32",
    "float64": "FP64",
    "double": "FP64",
    "bytes": "BYTES",
    "string": "BYTES",
}


def normalize_datatype(name: str) -> str:
    """Return the V2 datatype name for ``name`` (V2 name or numpy-style alias)."""
    upper = name.upper()
    if upper in V2_TO_NUMPY:
        return upper
    alias = ALIASES.get(name.lower())
    if alias is None:
        known = ", ".join(V2_TO_NUMPY)
        raise ValueError(f"unknown datatype {name!r}; expected one of {known}")
    return alias


def output_datatype(name: str, array: np.ndarray) -> str:
    """The V2 datatype of a model's output; a dtype V2 cannot carry is the model's fault."""
    datatype = NUMPY_TO_V2.get(array.dtype)
    if datatype is None:
        raise ModelError(f"output {name!r} has dtype {array.dtype}, which V2 cannot carry")
    return datatype


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype of an array a client sends (object arrays are ``BYTES``)."""
    try:
        return NUMPY_TO_V2[array.dtype]
    except KeyError:
        raise InvalidInput(f"arrays of dtype {array.dtype} have no V2 datatype") from None
