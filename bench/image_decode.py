"""Image handler input: decode + resize + crop (+ normalize) per image, before and after the
fast path, and how far the fast path's pixels are from the Pillow pipeline it replaces.

Per photo-like JPEG (tests/handlers/jpeg_samples.py: 500x375 to 12 MP, 4:2:0 and 4:4:4,
grayscale), the image handler's default geometry (resize 256, crop 224), one thread:

- before: Pillow with ``draft``, resize of the whole image, then the crop (the handler until
  issue 14);
- Pillow now: the same decode, the resize computing only the crop's pixels;
- simplejpeg: the fast path (``decoder: auto`` with simplejpeg installed);
- handler: ``ImageHandler.preprocess`` on the fast path (decode to normalized float tensor).

Times are the median thread CPU time over ``--repeats`` rounds of the four, interleaved
(CPU time, not wall time, so that other processes on a shared machine inflate them less). Pixel differences are
against "before"; top-1 compares ResNet-18 (random weights, seed 0) on "before" and on the
fast path's tensors. Usage: ``python bench/image_decode.py [--repeats N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "handlers"))
from harness import machine_line
from jpeg_samples import SAMPLES, decode_as_before

from torchferry.handlers import ImageHandler
from torchferry.handlers.base import HandlerContext, HandlerRequest
from torchferry.handlers.image_decode import FAST_JPEG, ImageGeometry, decode_image
from torchferry.signature import ModelSignature, TensorSpec
from torchferry.zoo.resnet import resnet18

console = Console(width=150)


def cpu_ms(steps: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median thread CPU ms of each step, the steps interleaved so that whatever else runs
    on the machine weighs on each alike."""
    times: list[list[float]] = [[] for _ in steps]
    for round_ in range(repeats + 1):
        for step, spent in zip(steps, times, strict=True):
            started = time.thread_time()
            step()
            if round_:  # round 0 warms up
                spent.append(time.thread_time() - started)
    return [statistics.median(spent) * 1e3 for spent in times]


def image_handler(color: str) -> ImageHandler:
    channels = len(color)
    signature = ModelSignature(
        inputs=(TensorSpec(name="image", datatype="FP32", shape=(-1, channels, 224, 224)),),
        outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 1000)),),
    )
    handler = ImageHandler()
    handler.setup(HandlerContext({}, {"color": color}, signature, "bench", 1))
    return handler


def normalized(handler: ImageHandler, pixels: np.ndarray) -> torch.Tensor:
    """uint8 HxW(xC) -> the handler's normalization, as a 3-channel tensor for ResNet-18."""
    array = pixels.reshape(*pixels.shape[:2], -1).astype(np.float32)
    array = array * handler.scale - handler.shift
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).expand(3, -1, -1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="median of this many decodes")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if not FAST_JPEG:
        console.print("[red]simplejpeg is not installed[/]: pip install torchferry[jpeg]")
        return 1
    torch.manual_seed(0)
    model = resnet18().eval()
    handlers = {color: image_handler(color) for color in ("RGB", "L")}
    table = Table(title=f"image decode + preprocess, CPU ms per image — {machine_line()}")
    columns = ["image", "KB", "before", "Pillow now", "simplejpeg", "handler", "speed-up"]
    columns += ["max diff", "pixels ≠", "top-1 same"]
    for column in columns:
        table.add_column(column, justify="left" if column == "image" else "right")
    rows = []
    for sample in SAMPLES:
        blob = sample.encode()
        geometry = ImageGeometry("L" if sample.mode == "L" else "RGB", 256, 224)
        handler = handlers[geometry.color]
        request = HandlerRequest(body=blob, content_type="image/jpeg")
        before, pillow, fast, whole = cpu_ms(
            [
                lambda: decode_as_before(blob, geometry),  # noqa: B023
                lambda: decode_image(blob, geometry, fast=False),  # noqa: B023
                lambda: decode_image(blob, geometry, fast=True),  # noqa: B023
                lambda: handler.preprocess(request),  # noqa: B023
            ],
            args.repeats,
        )
        reference = decode_as_before(blob, geometry)
        ours = decode_image(blob, geometry, fast=True)
        diff = np.abs(reference.astype(np.int16) - ours.astype(np.int16))
        with torch.inference_mode():
            batch = torch.stack([normalized(handler, reference), normalized(handler, ours)])
            top1 = model(batch).argmax(dim=1).tolist()
        row = {
            "image": sample.name,
            "kb": len(blob) / 1024,
            "before_ms": before,
            "pillow_now_ms": pillow,
            "simplejpeg_ms": fast,
            "handler_ms": whole,
            "speedup": before / fast,
            "max_diff": int(diff.max()),
            "over_1_level": float((diff > 1).mean()),
            "differing": float((diff > 0).mean()),
            "top1_same": top1[0] == top1[1],
        }
        rows.append(row)
        table.add_row(
            sample.name,
            f"{row['kb']:.0f}",
            f"{before:.2f}",
            f"{pillow:.2f}",
            f"{fast:.2f}",
            f"{whole:.2f}",
            f"{row['speedup']:.2f}x",
            str(row["max_diff"]),
            f"{row['differing']:.3%}",
            "yes" if row["top1_same"] else "NO",
        )
    console.print(table)
    if args.json:
        args.json.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
