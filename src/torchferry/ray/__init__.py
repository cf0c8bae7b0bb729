"""torchferry as a Ray Serve application: replicas that each load the store and serve every
HTTP protocol behind Serve's proxy. The only package that imports ``ray`` (the ``ray``
extra: ``pip install 'torchferry[ray]'``).

- ``application(RaySettings(...))``: for ``serve.run`` from Python;
- ``app``: the builder of a Serve config file (``import_path: torchferry.ray:app``);
- ``serve_on_ray``: ``torchferry serve --ray``.

The names are imported on first use (module ``__getattr__``): ``torchferry.ray.config``
(the settings, plain pydantic) stays importable without Ray, so the CLI checks its options
with the settings' own rules whether Ray is installed or not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchferry.ray.builders import (
        app,
        application,
        deploy,
        manager,
        manager_application,
    )
    from torchferry.ray.config import Autoscaling, RaySettings, settings_from_args
    from torchferry.ray.run import serve_on_ray

#: Each public name, and the module that defines it.
_HOMES = {
    "app": "builders",
    "application": "builders",
    "deploy": "builders",
    "manager": "builders",
    "manager_application": "builders",
    "Autoscaling": "config",
    "RaySettings": "config",
    "settings_from_args": "config",
    "serve_on_ray": "run",
}

__all__ = [
    "Autoscaling",
    "RaySettings",
    "app",
    "application",
    "deploy",
    "manager",
    "manager_application",
    "serve_on_ray",
    "settings_from_args",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
