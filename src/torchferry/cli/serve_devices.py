"""``torchferry serve``'s device options: ``--device`` and ``--runtime``, each checked by its
form when the command line is read, and the pair checked together (docs/gpu.md). Whether a
GPU is usable is each engine's question, asked when it loads a model."""

from __future__ import annotations

import argparse

from torchferry.archive.formats import ONNXRUNTIME_TRT
from torchferry.devices import DEVICE_FORMS, parse_device
from torchferry.errors import DeviceUnavailable


def register_devices(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="cpu",
        type=device_argument,
        help="where models run: cpu (default), cuda or cuda:N; a GPU that is not usable "
        "refuses the model, never runs it on the CPU (docs/gpu.md)",
    )
    parser.add_argument(
        "--runtime",
        help="serve this runtime where archives have its graph (onnxruntime-trt: TensorRT on "
        "the ONNX graph, with --device cuda)",
    )


def device_argument(text: str) -> str:
    """``--device``, checked by its form here; whether it is usable, by each engine at load."""
    try:
        parse_device(text)
    except DeviceUnavailable:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use {DEVICE_FORMS}") from None
    return text


def runtime_device_conflict(args: argparse.Namespace) -> str | None:
    """``--runtime onnxruntime-trt`` off a GPU (``--device cpu``, the default): every ONNX
    model would fail at load, so the pair is refused before anything starts."""
    if args.runtime == ONNXRUNTIME_TRT and not parse_device(args.device).is_cuda:
        return (
            f"--runtime {ONNXRUNTIME_TRT} runs TensorRT on an NVIDIA GPU: give --device cuda "
            f"or cuda:N with it (--device is {args.device})"
        )
    return None
