"""Edge values of every V2 datatype, shared by the codec tests."""

from __future__ import annotations

#: Six values per datatype, extremes included, in JSON form.
SAMPLES: dict[str, list] = {
    "BOOL": [True, False, True, True, False, False],
    "UINT8": [0, 1, 2, 253, 254, 255],
    "UINT16": [0, 1, 2, 3, 65534, 65535],
    "UINT32": [0, 1, 2, 3, 4, 2**32 - 1],
    "UINT64": [0, 1, 2, 3, 2**63, 2**64 - 1],
    "INT8": [-128, -1, 0, 1, 2, 127],
    "INT16": [-(2**15), -1, 0, 1, 2, 2**15 - 1],
    "INT32": [-(2**31), -1, 0, 1, 2, 2**31 - 1],
    "INT64": [-(2**63), -1, 0, 1, 2, 2**63 - 1],
    "FP16": [-1.5, 0.0, 0.25, 2.0, 65504.0, -0.125],
    "FP32": [-1.5, 0.0, 0.1, 2.0, 3.4e38, -1e-30],
    "FP64": [-1.5, 0.0, 0.1, 2.0, 1.7e308, -1e-300],
    "BYTES": ["a", "", "héllo", "tab\t", "nul\x00", "末"],
}
