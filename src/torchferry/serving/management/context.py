"""What every management route works on: the fleet, the settings, and the registrations
still running in the background (``POST /models?synchronous=false``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from torchferry.errors import ModelNotFound
from torchferry.serving.lifecycle.policy import VersionPolicy
from torchferry.serving.management.answers import parse_version
from torchferry.serving.management.api import FleetAPI, VersionView
from torchferry.serving.settings import ServerSettings
from torchferry.serving.torchserve_rules import VersionNotFound


@dataclass(frozen=True)
class KnownVersion:
    """A version the fleet lists without a record of it (in the desired state only), or a
    registration that has not reached the fleet yet."""

    name: str
    version: int
    state: str = "ready"
    reason: str | None = None
    record: Mapping[str, Any] | None = None
    source: str | None = None


@dataclass
class Management:
    fleet: FleetAPI
    settings: ServerSettings
    #: Background registrations by (name, version); each removes itself when it ends.
    registering: dict[tuple[str, int], asyncio.Task[None]] = field(default_factory=dict)

    def versions(self, name: str) -> dict[int, VersionView]:
        """Every version of ``name`` known (loaded, loading, failed), ascending."""
        fleet = self.fleet
        found: dict[int, VersionView] = {
            v: info for (n, v), info in fleet.versions.items() if n == name
        }
        model = fleet.state.models.get(name)
        for version in model.versions if model is not None else ():
            found.setdefault(version, KnownVersion(name, version))
        for n, version in self.registering:
            if n == name:
                found.setdefault(version, KnownVersion(name, version, state="loading"))
        return dict(sorted(found.items()))

    def require(self, name: str) -> dict[int, VersionView]:
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(f"Model not found: {name}")
        return versions

    def require_version(self, name: str, version: int) -> VersionView:
        versions = self.require(name)
        if version not in versions:
            raise VersionNotFound(f"Model version: {version} does not exist for model: {name}")
        return versions[version]

    def require_named(self, name: str, text: str) -> int:
        """The version a URL path names (``3``, ``3.0``) of a known model: 404 for an unknown
        model first, then for a version it does not have."""
        self.require(name)
        version = parse_version(name, text)
        self.require_version(name, version)
        return version

    def names(self) -> list[str]:
        fleet = self.fleet
        names = {n for n, _ in fleet.versions}
        names.update(n for n, model in fleet.state.models.items() if model.versions)
        names.update(n for n, _ in self.registering)
        return sorted(names)

    def policy(self, name: str) -> VersionPolicy:
        """The version policy ``name`` follows (its own, else the server's for it)."""
        return self.fleet.state.policy(name, self.settings.policy_for)

    def default(self, name: str) -> int | None:
        """The version answering unversioned requests; None while none of the model serves."""
        try:
            return self.fleet.effective_default(name)
        except (ModelNotFound, KeyError, ValueError):
            return None


def management_of(request: Request) -> Management:
    management: Management = request.app.state.management
    return management
