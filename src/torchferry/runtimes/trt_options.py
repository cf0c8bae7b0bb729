"""What the TensorRT runtime gives ONNX Runtime's TensorRT provider: the precision a manifest
asks for, the input shape profile, and the provider's option dict. Pure functions of the
manifest, so they are checked without a GPU.

A manifest's ``runtime_options`` for ``onnxruntime-trt``:

- ``trt_fp16: true``: let TensorRT pick fp16 kernels where they are faster;
- ``trt_int8: true``: int8 kernels, with the ranges of a QDQ graph's Q/DQ nodes, or of
  ``trt_int8_calibration_table_name``: a file of the archive (ONNX Runtime's FlatBuffers
  table, ``onnxruntime.quantization``'s ``write_calibration_table``), for a float graph;
- ``trt_profile_min_shapes``, ``trt_profile_opt_shapes``, ``trt_profile_max_shapes``
  (``name:1x3x224x224,name2:...``, all three): the shapes TensorRT builds its engine for.
  Without them they come from the signature: every dynamic input from batch 1 to the
  manifest's ``batching.max_batch_size``, optimized for the largest; an input with another
  dynamic dimension needs them given.

An unknown ``trt_`` option is refused: a misspelt flag would otherwise build an engine
without it, silently.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from torchferry.codecs.datatypes import V2_TO_NUMPY
from torchferry.devices import Device
from torchferry.errors import ArchiveError
from torchferry.runtimes.onnx_providers import flag
from torchferry.signature import ModelSignature

FP16 = "trt_fp16"
INT8 = "trt_int8"
CALIBRATION_TABLE = "trt_int8_calibration_table_name"
PROFILE_KEYS = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")
KNOWN = frozenset({FP16, INT8, CALIBRATION_TABLE, *PROFILE_KEYS})

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class Precision:
    fp16: bool = False
    int8: bool = False
    #: The archive's file holding the int8 ranges (None: a QDQ graph's own, or no int8).
    calibration_table: str | None = None

    @property
    def staged_table(self) -> str | None:
        """The table's name beside the engines, where ONNX Runtime reads it (it looks for
        ``trt_int8_calibration_table_name`` in ``trt_engine_cache_path``)."""
        return PurePosixPath(self.calibration_table).name if self.calibration_table else None


@dataclass(frozen=True)
class ShapeProfile:
    """The min, opt and max shapes of every dynamic input, in ONNX Runtime's option syntax;
    all empty when no input is dynamic (TensorRT then needs no profile)."""

    min: str = ""
    opt: str = ""
    max: str = ""
    #: The most rows one run may have (a larger batch is run in parts); None when the batch
    #: dimension is fixed or no input is dynamic.
    max_rows: int | None = None

    def __bool__(self) -> bool:
        return bool(self.max)


def _label(what: str) -> str:
    return f"runtime option {what}"


def check_known(options: Mapping[str, Any]) -> None:
    unknown = sorted(k for k in options if k.startswith("trt_") and k not in KNOWN)
    if unknown:
        raise ArchiveError(
            f"unknown TensorRT runtime option {unknown[0]!r}; known ones are {sorted(KNOWN)}"
        )


def _flag(options: Mapping[str, Any], key: str) -> bool:
    value = options.get(key, False)
    if not isinstance(value, bool):
        raise ArchiveError(f"{_label(key)} is {value!r}: expected true or false")
    return value


def precision_of(options: Mapping[str, Any], files: Collection[str]) -> Precision:
    """The precision ``runtime_options`` ask for; the calibration table must be one of the
    archive's ``files`` (hashed, like every file an engine reads)."""
    check_known(options)
    fp16, int8 = _flag(options, FP16), _flag(options, INT8)
    table = options.get(CALIBRATION_TABLE)
    if table is not None:
        if not int8:
            raise ArchiveError(f"{_label(CALIBRATION_TABLE)} is given without {INT8}: true")
        if not isinstance(table, str) or table not in files:
            raise ArchiveError(
                f"{_label(CALIBRATION_TABLE)} names {table!r}, which is not a file the "
                "archive lists"
            )
    return Precision(fp16=fp16, int8=int8, calibration_table=table)


def format_shapes(shapes: Shapes) -> str:
    """``{"x": (1, 3)}`` -> ``"x:1x3"``, ONNX Runtime's syntax."""
    return ",".join(f"{name}:{'x'.join(map(str, dims))}" for name, dims in shapes.items())


def parse_shapes(text: str, key: str) -> Shapes:
    """ONNX Runtime's ``name:1x3x224x224,name2:...``, every dimension positive."""
    shapes: Shapes = {}
    for part in text.split(","):
        name, sep, dims = part.rpartition(":")
        try:
            parsed = tuple(int(d) for d in dims.split("x"))
        except ValueError:
            parsed = ()
        if not sep or not name or not parsed or min(parsed) < 1 or name in shapes:
            raise ArchiveError(
                f"{_label(key)}: {part!r} is not NAME:DIMxDIM... with positive dims "
                "(once per input)"
            )
        shapes[name] = parsed
    return shapes


def _check_name(name: str) -> None:
    if ":" in name or "," in name:
        raise ArchiveError(
            f"input {name!r}: TensorRT's profile options cannot name an input with ':' or ','"
        )


def shape_profile(
    signature: ModelSignature, max_batch: int, options: Mapping[str, Any]
) -> ShapeProfile:
    """The profile ``runtime_options`` give (all three keys), else the signature's dynamic
    inputs from batch 1 to ``max_batch``, optimized for ``max_batch``."""
    # first: a misspelt profile key is an unknown option, not an incomplete profile
    check_known(options)
    given = [options.get(key) for key in PROFILE_KEYS]
    if any(value is not None for value in given):
        return _given_profile(signature, given)
    dynamic = [spec for spec in signature.inputs if -1 in spec.shape]
    if not dynamic:
        return ShapeProfile()
    low: Shapes = {}
    high: Shapes = {}
    for spec in dynamic:
        _check_name(spec.name)
        if -1 in spec.shape[1:]:
            raise ArchiveError(
                f"input {spec.name!r} has dynamic dimensions besides the batch (shape "
                f"{list(spec.shape)}): TensorRT needs their range; give it in the manifest's "
                f"runtime_options {', '.join(PROFILE_KEYS)} ({spec.name}:1x...)"
            )
        rest = spec.shape[1:]
        low[spec.name] = (1, *rest)
        high[spec.name] = (max_batch, *rest)
    # every dynamic input here is dynamic in its batch alone (checked above)
    return ShapeProfile(format_shapes(low), format_shapes(high), format_shapes(high), max_batch)


def _given_profile(signature: ModelSignature, given: list[Any]) -> ShapeProfile:
    if not all(isinstance(value, str) and value for value in given):
        raise ArchiveError(
            f"runtime options {', '.join(PROFILE_KEYS)} go together: give all three, "
            "each NAME:DIMxDIM,..."
        )
    low, opt, high = (parse_shapes(v, k) for v, k in zip(given, PROFILE_KEYS, strict=True))
    inputs = {spec.name: spec for spec in signature.inputs}
    missing = [s.name for s in signature.inputs if -1 in s.shape and s.name not in high]
    if missing:
        raise ArchiveError(f"TensorRT profile: dynamic input {missing[0]!r} has no shapes")
    for name in high:
        _check_name(name)
        spec = inputs.get(name)
        if spec is None:
            raise ArchiveError(f"TensorRT profile: the signature has no input {name!r}")
        shapes = (low.get(name, ()), opt.get(name, ()), high[name])
        rank = len(spec.shape)
        ordered = all(a <= b <= c for a, b, c in zip(*shapes, strict=False))
        if any(len(s) != rank for s in shapes) or not ordered:
            raise ArchiveError(
                f"TensorRT profile of input {name!r}: min {shapes[0]}, opt {shapes[1]}, max "
                f"{shapes[2]} must each have {rank} dims with min <= opt <= max"
            )
        if any(want not in (-1, got) for want, got in zip(spec.shape, high[name], strict=True)):
            raise ArchiveError(
                f"TensorRT profile of input {name!r}: {high[name]} does not fit its "
                f"signature shape {list(spec.shape)}"
            )
    batched = [high[name][0] for name in high if inputs[name].shape[0] == -1]
    low_text, opt_text, high_text = (str(value) for value in given)
    return ShapeProfile(low_text, opt_text, high_text, min(batched) if batched else None)


def profile_feeds(signature: ModelSignature, profile: ShapeProfile) -> list[dict[str, np.ndarray]]:
    """Zeros at the profile's smallest and largest shapes (the signature's own shape for an
    input the profile does not name); none when an input is text, which TensorRT never
    takes, or bfloat16, which numpy cannot hold."""
    if any(spec.datatype in ("BYTES", "BF16") for spec in signature.inputs):
        return []
    ends = [parse_shapes(profile.min, "min"), parse_shapes(profile.max, "max")] if profile else [{}]
    feeds = []
    for shapes in ends:
        feed = {}
        for spec in signature.inputs:
            shape = shapes.get(spec.name, tuple(max(d, 1) for d in spec.shape))
            feed[spec.name] = np.zeros(shape, dtype=V2_TO_NUMPY[spec.datatype])
        feeds.append(feed)
    return feeds


def tensorrt_options(
    device: Device,
    precision: Precision,
    profile: ShapeProfile,
    directory: Path,
    *,
    cache: bool,
) -> dict[str, str]:
    """The TensorRT provider's options: ``directory`` holds the calibration table (ONNX
    Runtime reads it from the engine cache's path) and, with ``cache``, the engines, their
    profiles and TensorRT's timing cache."""
    options = {
        "device_id": str(device.index),
        "trt_fp16_enable": flag(precision.fp16),
        "trt_int8_enable": flag(precision.int8),
        "trt_engine_cache_enable": flag(cache),
        "trt_engine_cache_path": str(directory),
        "trt_timing_cache_enable": flag(cache),
        "trt_timing_cache_path": str(directory),
    }
    if precision.staged_table:
        options["trt_int8_calibration_table_name"] = precision.staged_table
        # ONNX Runtime's own table format (write_calibration_table), not TensorRT's
        options["trt_int8_use_native_calibration_table"] = flag(False)
    if profile:
        options["trt_profile_min_shapes"] = profile.min
        options["trt_profile_opt_shapes"] = profile.opt
        options["trt_profile_max_shapes"] = profile.max
    return options


__all__ = [
    "KNOWN",
    "Precision",
    "ShapeProfile",
    "check_known",
    "format_shapes",
    "parse_shapes",
    "precision_of",
    "profile_feeds",
    "shape_profile",
    "tensorrt_options",
]
