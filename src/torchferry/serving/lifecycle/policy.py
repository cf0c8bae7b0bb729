"""Version policies, as TF-Serving and Triton have them: which of a model's versions in the
store are loaded.

- ``all``: every version;
- ``latest N``: the N highest;
- ``specific [v, ...]``: those versions (the ones the store has).

Written on the command line as ``all``, ``latest:2`` or ``specific:1,3`` (optionally
``MODEL=`` first), and in JSON in Triton's ``version_policy`` shape:
``{"latest": {"num_versions": 2}}``, ``{"specific": {"versions": [1, 3]}}``, ``{"all": {}}``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator


class VersionPolicy(BaseModel):
    kind: Literal["all", "latest", "specific"] = "all"
    #: For ``latest``.
    num_versions: int = Field(default=1, ge=1)
    #: For ``specific``.
    versions: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _specific_names_versions(self) -> VersionPolicy:
        if self.kind == "specific" and not self.versions:
            raise ValueError("a specific version policy names at least one version")
        if any(v < 1 for v in self.versions):
            raise ValueError("versions are integers from 1")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions of ``available`` (the store's) this policy loads, ascending."""
        ordered = sorted(set(available))
        if self.kind == "latest":
            return ordered[-self.num_versions :]
        if self.kind == "specific":
            wanted = set(self.versions)
            return [v for v in ordered if v in wanted]
        return ordered

    # -- text and JSON forms -----------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """``all``, ``latest:N`` or ``specific:V[,V...]`` (ValueError with the reason)."""
        kind, _, rest = text.strip().partition(":")
        kind = kind.strip().lower()
        try:
            if kind == "all" and not rest:
                return cls(kind="all")
            if kind == "latest":
                return cls(kind="latest", num_versions=int(rest or "1"))
            if kind == "specific":
                return cls(kind="specific", versions=[int(v) for v in rest.split(",") if v])
        except ValueError as exc:
            raise ValueError(f"version policy {text!r}: {exc}") from None
        raise ValueError(f"version policy {text!r}: expected all, latest:N or specific:V1,V2")

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.num_versions}"
        if self.kind == "specific":
            return "specific:" + ",".join(str(v) for v in self.versions)
        return "all"

    @classmethod
    def from_triton(cls, document: Any) -> VersionPolicy:
        """Triton's ``version_policy`` JSON (ValueError with the reason)."""
        if not isinstance(document, dict) or len(document) != 1:
            raise ValueError(
                'a version policy is one of {"all": {}}, {"latest": {"num_versions": N}} '
                'or {"specific": {"versions": [V, ...]}}'
            )
        ((kind, body),) = document.items()
        body = body or {}
        if not isinstance(body, dict):
            raise ValueError(f"version policy {kind!r}: expected an object")
        if kind == "all":
            return cls(kind="all")
        if kind == "latest":
            return cls(kind="latest", num_versions=int(body.get("num_versions", 1)))
        if kind == "specific":
            return cls(kind="specific", versions=[int(v) for v in body.get("versions", [])])
        raise ValueError(f"unknown version policy {kind!r}: use all, latest or specific")

    def to_triton(self) -> dict[str, Any]:
        if self.kind == "latest":
            return {"latest": {"num_versions": self.num_versions}}
        if self.kind == "specific":
            return {"specific": {"versions": list(self.versions)}}
        return {"all": {}}
