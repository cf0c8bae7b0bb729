"""``torchferry --version`` names the installed version (SECURITY.md asks reporters for it)."""

from __future__ import annotations

import pytest

import torchferry
from torchferry.cli import main


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"torchferry {torchferry.__version__}"
