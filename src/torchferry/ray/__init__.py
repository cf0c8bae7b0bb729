"""torchferry as a Ray Serve application: replicas that each load the store and serve every
HTTP protocol behind Serve's proxy. The only package that imports ``ray`` (the ``ray``
extra: ``pip install 'torchferry[ray]'``).

- ``application(RaySettings(...))``: for ``serve.run`` from Python;
- ``app``: the builder of a Serve config file (``import_path: torchferry.ray:app``);
- ``serve_on_ray``: ``torchferry serve --ray``.
"""

from __future__ import annotations

from torchferry.ray.application import app, application, deploy, manager, manager_application
from torchferry.ray.config import Autoscaling, RaySettings, settings_from_args
from torchferry.ray.run import serve_on_ray

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
