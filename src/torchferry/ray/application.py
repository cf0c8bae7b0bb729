"""The Serve application from ``RaySettings``, and the builder a Serve config file names
(``import_path: torchferry.ray:app``)."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from torchferry.ray.config import RaySettings, settings_from_args
from torchferry.ray.replica import TorchferryReplica


def application(settings: RaySettings) -> Application:
    """The torchferry deployment, bound and ready for ``serve.run``."""
    deployment = TorchferryReplica.options(**settings.deployment_options())
    return deployment.bind(settings.replica_settings().model_dump(mode="json"), settings.revision)


def app(args: dict[str, Any] | None = None) -> Application:
    """Serve's application builder: ``args`` is the config file's ``args`` mapping, Serve's
    fields and the server's side by side (``store``, ``num_replicas``, ``num_cpus``...)."""
    return application(settings_from_args(args))
