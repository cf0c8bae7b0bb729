"""The Serve application from ``RaySettings``, and the builder a Serve config file names
(``import_path: torchferry.ray:app``)."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from torchferry.ray.config import RaySettings, settings_from_args
from torchferry.ray.management import MANAGER
from torchferry.ray.replica import REPLICAS


def application(settings: RaySettings) -> Application:
    """The serving replicas, bound and ready for ``serve.run`` (with the manager's
    application, ``manager_application``, when management is on)."""
    deployment = REPLICAS.options(**settings.deployment_options())
    manager = settings.manager_name if settings.management else None
    replica = settings.replica_settings().model_dump(mode="json")
    return deployment.bind(replica, settings.revision, manager)


def manager_application(settings: RaySettings) -> Application:
    """The management API and the fleet behind it: one replica, no CPU reserved."""
    deployment = MANAGER.options(
        ray_actor_options={"num_cpus": 0},
        # Serve's line per call would log every replica's poll, every 2 s
        logging_config={"enable_access_log": False},
    )
    return deployment.bind(settings.manager_settings().model_dump(mode="json"))


def deploy(settings: RaySettings) -> None:
    """Run the application (and its manager) on the Serve this process is connected to;
    returns once every replica serves. Running it again is a rolling update of the replicas,
    and a restart of the manager: like a restarted server, it starts from the store's state
    file when there is one, else from the store (new versions in it are then served)."""
    targets = [serve.RunTarget(application(settings), settings.name, settings.route_prefix)]
    if settings.management:  # at once: a replica joins the manager whenever it is up
        manager = manager_application(settings)
        targets.append(serve.RunTarget(manager, settings.manager_name, settings.manager_route))
    serve.run_many(targets)


def manager(args: dict[str, Any] | None = None) -> Application:
    """Serve's builder for the manager's application (``import_path:
    torchferry.ray:manager``), given the same ``args`` as ``app``."""
    return manager_application(settings_from_args(args))


def app(args: dict[str, Any] | None = None) -> Application:
    """Serve's application builder: ``args`` is the config file's ``args`` mapping, Serve's
    fields and the server's side by side (``store``, ``num_replicas``, ``num_cpus``...)."""
    return application(settings_from_args(args))
