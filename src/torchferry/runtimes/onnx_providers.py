"""ONNX Runtime's execution providers for a device: which ones, with what options, and the
checks that they exist and that ONNX Runtime really started them.

ONNX Runtime drops a provider it cannot create and runs on the next one: asked for CUDA
without ``onnxruntime-gpu`` (or without the CUDA libraries), it warns and runs everything on
the CPU. An operator who asked for a GPU gets an error instead, at load, saying what is
missing: :func:`require_available` before the session (the provider is not in this build of
onnxruntime) and :func:`require_started` after it (the build has it, but it did not start).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from torchferry.devices import Device
from torchferry.errors import DeviceUnavailable

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"

#: A provider with its options, as ``InferenceSession(providers=...)`` takes it; option
#: values are strings, as ONNX Runtime parses them ("True"/"False" for flags).
Provider = tuple[str, dict[str, str]]

#: What a provider needs, for the messages.
NEEDS = {
    CUDA_PROVIDER: (
        "install onnxruntime-gpu in place of onnxruntime (pip uninstall onnxruntime; "
        "pip install onnxruntime-gpu: the two packages provide the same module), with the "
        "CUDA and cuDNN libraries that onnxruntime-gpu release was built for"
    ),
    TENSORRT_PROVIDER: (
        "install onnxruntime-gpu in place of onnxruntime (pip uninstall onnxruntime; "
        "pip install onnxruntime-gpu), with NVIDIA TensorRT and the CUDA and cuDNN "
        "libraries that onnxruntime-gpu release was built for"
    ),
}


def flag(value: bool) -> str:
    """A flag as ONNX Runtime's provider options parse it (older releases take only these)."""
    return "True" if value else "False"


def cuda_options(device: Device) -> dict[str, str]:
    return {"device_id": str(device.index)}


def providers_for(device: Device) -> list[Provider]:
    """The CPU provider alone on the CPU; on ``cuda:N`` the CUDA provider on device N, then
    the CPU for the few operators CUDA has no kernel for (ONNX Runtime places them there)."""
    if not device.is_cuda:
        return [(CPU_PROVIDER, {})]
    return [(CUDA_PROVIDER, cuda_options(device)), (CPU_PROVIDER, {})]


def names(providers: Sequence[Provider]) -> list[str]:
    return [name for name, _ in providers]


def require_available(
    providers: Sequence[Provider], available: Collection[str], asked: str, version: str
) -> None:
    """Refuse (``DeviceUnavailable``) when this onnxruntime (``version``, whose
    ``get_available_providers()`` is ``available``) lacks a provider other than the CPU's:
    ``asked`` is what the operator asked for (``--device cuda:0``)."""
    for name in names(providers):
        if name != CPU_PROVIDER and name not in available:
            raise DeviceUnavailable(
                f"{asked} needs ONNX Runtime's {name}, which this onnxruntime {version} "
                f"does not have (it offers {', '.join(sorted(available))}): {NEEDS[name]}"
            )


def require_started(providers: Sequence[Provider], started: Sequence[str], asked: str) -> None:
    """Refuse (``DeviceUnavailable``) a session that runs without a provider it was given
    (``started`` is its ``get_providers()``): ONNX Runtime could not create it and fell back
    to the next one."""
    for name in names(providers):
        if name not in started:
            raise DeviceUnavailable(
                f"{asked}: ONNX Runtime did not start its {name} (the session would run on "
                f"{', '.join(started) or 'nothing'}): its libraries did not load or the GPU "
                f"is not usable; ONNX Runtime's log says which. Not running on the CPU "
                f"instead: {NEEDS.get(name, 'see ONNX Runtime log')}"
            )


__all__ = [
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "TENSORRT_PROVIDER",
    "Provider",
    "cuda_options",
    "flag",
    "names",
    "providers_for",
    "require_available",
    "require_started",
]
