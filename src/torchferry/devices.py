"""The devices a runtime can run on, as the operator names them: ``cpu``, ``cuda`` or
``cuda:N``.

Standard library only: the CLI checks ``--device`` when it parses its arguments (before any
engine loads), and every runtime reads the same rule. Whether the device is usable here is
each engine's question (PyTorch's CUDA, ONNX Runtime's providers), asked when it loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from torchferry.errors import DeviceUnavailable

_CUDA = re.compile(r"cuda(?::(\d+))?")
#: What ``--device`` accepts, for messages.
DEVICE_FORMS = "cpu, cuda or cuda:N (N the CUDA device index, from 0)"


@dataclass(frozen=True)
class Device:
    kind: Literal["cpu", "cuda"]
    #: The CUDA device index (0 for ``cuda``); 0 on the CPU.
    index: int = 0

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


CPU = Device("cpu")


def parse_device(text: str) -> Device:
    """``cpu``, ``cuda`` (device 0) or ``cuda:N``; anything else is refused with
    ``DeviceUnavailable``, naming the forms accepted."""
    if text == "cpu":
        return CPU
    match = _CUDA.fullmatch(text)
    if match is None:
        raise DeviceUnavailable(f"--device {text!r} is not a device: use {DEVICE_FORMS}")
    return Device("cuda", int(match.group(1) or 0))


__all__ = ["CPU", "DEVICE_FORMS", "Device", "parse_device"]
