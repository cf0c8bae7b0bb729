"""``--device``: cpu, cuda or cuda:N, checked when the CLI parses it."""

from __future__ import annotations

import pytest

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
