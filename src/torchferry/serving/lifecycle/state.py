"""The desired state: what every worker must serve, owned by the supervisor and persisted
in the store (``STORE/.torchferry/state.json``) so that a restart restores it.

Per model: the loaded versions, the default version (None: the highest loaded), the
traffic weights between loaded versions, the shadow (a version that sees a mirrored share
of traffic and whose answers are only compared), the version policy, and the rollout in
progress or last finished. Workers receive the routing part of it (``Routes``) over the
control channel and converge on it; this module knows nothing of workers.

The file is written to a temporary name and renamed into place, so a crash mid-write never
leaves half a state behind.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from torchferry.errors import InvalidInput
from torchferry.serving.lifecycle.policy import VersionPolicy
from torchferry.store_layout import MODEL_NAME_RULE, is_model_name

log = logging.getLogger("torchferry.lifecycle")

STATE_DIR = ".torchferry"
STATE_FILE = "state.json"


def check_model_name(name: str) -> str:
    """``name`` if it can name a model (a store directory), else InvalidInput (400)."""
    if not is_model_name(name):
        raise InvalidInput(f"model name {name!r}: {MODEL_NAME_RULE}")
    return name


class Shadow(BaseModel):
    """Mirror ``share`` of the requests that the routed versions answer to ``version``."""

    version: int = Field(ge=1)
    share: float = Field(default=1.0, gt=0, le=1)


class Routes(BaseModel):
    """How a worker routes a model's requests that name no version."""

    #: The version answering unversioned requests when there are no weights; None: highest.
    default: int | None = None
    #: Version -> weight (summing to 100): a weighted (or sticky, by key) choice per request.
    weights: dict[int, int] = Field(default_factory=dict)
    shadow: Shadow | None = None

    @field_validator("weights")
    @classmethod
    def _weights_valid(cls, weights: dict[int, int]) -> dict[int, int]:
        if any(w < 0 for w in weights.values()):
            raise ValueError("traffic weights are non-negative")
        if weights and sum(weights.values()) <= 0:
            raise ValueError("traffic weights must not all be zero")
        return {v: w for v, w in sorted(weights.items()) if w > 0}

    def without(self, *versions: int) -> Routes:
        """These routes naming none of ``versions`` (each being unloaded: it takes no more
        traffic, at once); weights left all zero become no weights."""
        gone = set(versions)
        weights = {v: w for v, w in self.weights.items() if v not in gone}
        shadow = self.shadow if self.shadow is None or self.shadow.version not in gone else None
        return Routes(
            default=None if self.default in gone else self.default,
            weights=weights if sum(weights.values()) > 0 else {},
            shadow=shadow,
        )


class Figures(BaseModel):
    """One version's live figures over a rollout step (or a shadow check)."""

    requests: int = 0
    errors: int = 0
    error_rate: float = 0.0
    p99_ms: float | None = None
    #: Shadow comparisons: rows compared, rows whose argmax agreed, largest |difference|.
    compared: int = 0
    agreement: float | None = None
    max_abs_diff: float | None = None


class RolloutSpec(BaseModel):
    """``POST /models/{m}/rollouts``: move traffic to ``version`` step by step."""

    version: int = Field(ge=1)
    #: Canary weights (percent), ascending, ending at 100.
    steps: list[int] = Field(default_factory=lambda: [10, 25, 50, 100])
    interval_s: float = Field(default=30.0, gt=0)
    #: The canary's error rate (server errors / requests) must stay at or below this...
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    #: ...and its p99 latency at or below this (no limit when None)...
    max_p99_ms: float | None = Field(default=None, gt=0)
    #: ...and at or below this multiple of the stable version's p99 over the same step.
    max_p99_ratio: float | None = Field(default=None, gt=0)
    #: Requests the canary must have answered in a step before the step is judged.
    min_requests: int = Field(default=100, ge=1)
    #: If set, shadow traffic must agree this well (argmax, over min_requests rows) first.
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    #: The share of traffic mirrored to the canary while the shadow is judged.
    shadow_share: float = Field(default=1.0, gt=0, le=1)

    @field_validator("steps")
    @classmethod
    def _steps_valid(cls, steps: list[int]) -> list[int]:
        if not steps or steps[-1] != 100:
            raise ValueError("rollout steps are percentages ending at 100")
        if any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError("rollout steps are distinct, ascending percentages in 1..100")
        return steps


RolloutPhase = Literal["pending", "stepping", "promoted", "rolled_back", "aborted"]


class RolloutDecision(BaseModel):
    """What one check decided, with the figures that decided it."""

    at: float
    #: Index into ``steps`` (-1: the shadow check before the first step).
    step: int
    weight: int
    verdict: Literal["advance", "promote", "rollback", "abort"]
    reason: str
    canary: Figures
    stable: Figures


class RolloutStatus(BaseModel):
    spec: RolloutSpec
    #: The version traffic goes back to on a rollback.
    stable: int
    phase: RolloutPhase = "pending"
    #: Index into ``spec.steps`` of the step in progress (-1 before the first).
    step: int = -1
    #: The canary's current share of traffic, percent.
    weight: int = 0
    #: Why it ended (promoted, rolled back, aborted); None while running.
    reason: str | None = None
    started_at: float
    updated_at: float
    history: list[RolloutDecision] = Field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.phase in ("pending", "stepping")


class ModelState(BaseModel):
    #: Loaded versions, ascending.
    versions: list[int] = Field(default_factory=list)
    routes: Routes = Field(default_factory=Routes)
    #: Which store versions to load; None: load what ``versions`` says (and, at a start
    #: without a state file, every version).
    policy: VersionPolicy | None = None
    rollout: RolloutStatus | None = None
    #: Where a management call staged each version from (shown, never read again).
    sources: dict[int, str] = Field(default_factory=dict)


class DesiredState(BaseModel):
    models: dict[str, ModelState] = Field(default_factory=dict)

    def policy(self, name: str, server_policy: Callable[[str], VersionPolicy]) -> VersionPolicy:
        """The version policy ``name`` follows: its own, else the server's for it
        (``ServerSettings.policy_for``): what a load, the API and the console all show."""
        model = self.models.get(name)
        return (
            model.policy if model is not None and model.policy is not None else server_policy(name)
        )

    @classmethod
    def path_in(cls, store: Path) -> Path:
        return store / STATE_DIR / STATE_FILE

    @classmethod
    def read(cls, store: Path) -> DesiredState | None:
        """The state saved in ``store``; None when there is none (or it cannot be read, which
        is logged: the server then starts from the store as if new)."""
        path = cls.path_in(store)
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError, ValueError) as exc:
            log.error("ignoring the saved state %s: %s", path, exc)
            return None

    def write(self, store: Path) -> None:
        path = self.path_in(store)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".state-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(self.model_dump_json(indent=2).encode())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
