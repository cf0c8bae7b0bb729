"""``--device``: cpu, cuda or cuda:N, checked when the CLI parses it (with ``--runtime``:
TensorRT only on a GPU)."""

from __future__ import annotations

import pytest

from torchferry.archive.formats import ONNXRUNTIME_TRT
from torchferry.cli import build_parser
from torchferry.cli.serve_cmd import settings_from_args
from torchferry.devices import CPU, Device, parse_device
from torchferry.errors import DeviceUnavailable


@pytest.mark.parametrize(
    ("text", "device"),
    [
        ("cpu", CPU),
        ("cuda", Device("cuda", 0)),
        ("cuda:0", Device("cuda", 0)),
        ("cuda:3", Device("cuda", 3)),
    ],
)
def test_the_forms_a_device_takes(text, device):
    parsed = parse_device(text)
    assert parsed == device
    assert parsed.is_cuda is (device.kind == "cuda")
    assert str(parsed) == ("cpu" if text == "cpu" else f"cuda:{device.index}")


@pytest.mark.parametrize(
    "text", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:x", "cuda:0:1", "mps", ""]
)
def test_anything_else_is_refused_naming_the_forms(text):
    with pytest.raises(DeviceUnavailable) as info:
        parse_device(text)
    assert info.value.message == (
        f"--device {text!r} is not a device: use cpu, cuda or cuda:N (N the CUDA device "
        "index, from 0)"
    )


def test_serve_checks_the_device_when_it_parses_its_arguments(capsys):
    args = build_parser().parse_args(["serve", "--store", "s", "--device", "cuda:1"])
    assert settings_from_args(args).device == "cuda:1"
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", "--store", "s", "--device", "gpu"])
    assert info.value.code == 2
    assert "argument --device: 'gpu' is not a device: use cpu, cuda or cuda:N" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "argv",
    [["--runtime", ONNXRUNTIME_TRT], ["--device", "cpu", "--runtime", ONNXRUNTIME_TRT]],
)
def test_serve_refuses_tensorrt_on_the_cpu_when_it_parses_its_arguments(argv, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", "--store", "s", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: torchferry serve ")
    assert (
        "error: --runtime onnxruntime-trt runs TensorRT on an NVIDIA GPU: give --device cuda "
        "or cuda:N with it (--device is cpu)"
    ) in err


def test_serve_takes_tensorrt_on_a_gpu_in_either_order():
    for argv in (
        ["--runtime", ONNXRUNTIME_TRT, "--device", "cuda:1"],
        ["--device", "cuda", "--runtime", ONNXRUNTIME_TRT],
    ):
        settings = settings_from_args(build_parser().parse_args(["serve", "--store", "s", *argv]))
        assert settings.runtime == ONNXRUNTIME_TRT and settings.device in ("cuda", "cuda:1")
    # other runtimes run on the CPU as before
    args = build_parser().parse_args(["serve", "--store", "s", "--runtime", "torchscript"])
    assert settings_from_args(args).device == "cpu"
