"""The management tests' fake fleet (``tests/serving/management/fake_fleet.py``), loaded by
path for the CLI tests that serve the management app over it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def fake_fleet_module() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "serving" / "management" / "fake_fleet.py"
    spec = importlib.util.spec_from_file_location("fake_fleet", path)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get("fake_fleet") or importlib.util.module_from_spec(spec)
    if "fake_fleet" not in sys.modules:
        sys.modules["fake_fleet"] = module
        spec.loader.exec_module(module)
    return module
