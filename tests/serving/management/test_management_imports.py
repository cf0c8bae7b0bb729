"""The management package runs inside the supervisor, which never imports an engine or
numpy: checked in a fresh interpreter (this one has them loaded by the test fixtures)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FORBIDDEN = (
    "numpy",
    "torch",
    "onnxruntime",
    "torchferry.runtimes",
    "torchferry.handlers",
    "torchferry.signature",
    "torchferry.archive",
    "torchferry.serving.app",
    "torchferry.serving.repository",
    "torchferry.serving.dataplane",
    "torchferry.serving.protocols",
)

SCRIPT = f"""
import sys
import torchferry.serving.management.app
import torchferry.serving.console.app
import torchferry.cli.deploy_cmd
bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in {FORBIDDEN!r}))
print(",".join(bad))
"""


def test_the_management_app_and_deploy_command_import_no_engine() -> None:
    source = Path(__file__).resolve().parents[3] / "src"
    env = {**os.environ, "PYTHONPATH": f"{source}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == ""
