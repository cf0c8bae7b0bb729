"""The desired state a server starts from: the one saved in the store (less what has left the
store since), else each model's version policy over the store's versions."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from torchferry.serving.lifecycle.state import DesiredState, ModelState
from torchferry.serving.settings import ServerSettings
from torchferry.store_layout import store_models, store_versions

log = logging.getLogger("torchferry.lifecycle")


def initial_state(settings: ServerSettings, store: Path) -> DesiredState:
    saved = DesiredState.read(store)
    names = list(settings.models) or store_models(store)
    if saved is not None:
        for name, model in saved.models.items():
            if name in names or not model.versions:
                continue
            if settings.models:
                log.warning(
                    "model %s is in the saved state but not among --model: not served, and "
                    "forgotten at the next change",
                    name,
                    extra={"event": "model_not_restored", "model": name},
                )
            else:
                log.warning(
                    "model %s is no longer in the store: not restored",
                    name,
                    extra={"event": "version_vanished", "model": name},
                )
    state = DesiredState()
    for name in names:
        available = store_versions(store, name)
        if saved is not None and name in saved.models:
            state.models[name] = _restored(name, saved.models[name], available)
        elif available:
            policy = settings.policy_for(name)
            state.models[name] = ModelState(versions=policy.select(available), policy=policy)
    return state


def _restored(name: str, model: ModelState, available: list[int]) -> ModelState:
    model = model.model_copy(deep=True)
    gone = [v for v in model.versions if v not in available]
    if not gone:
        return model
    log.warning(
        "model %s version(s) %s are no longer in the store: not restored",
        name,
        ", ".join(map(str, gone)),
        extra={"event": "version_vanished", "model": name, "versions": gone},
    )
    model.versions = [v for v in model.versions if v in available]
    model.routes = model.routes.without(*gone)
    if model.policy is not None and model.policy.kind == "specific":
        kept = [v for v in model.policy.versions if v in available]
        model.policy = model.policy.model_copy(update={"versions": kept}) if kept else None
    rollout = model.rollout
    if (
        rollout is not None
        and rollout.running
        and {rollout.stable, rollout.spec.version} & set(gone)
    ):
        rollout.phase, rollout.reason = "aborted", "a version it used left the store"
        rollout.updated_at = time.time()
        stable = rollout.stable if rollout.stable in model.versions else None
        model.routes = model.routes.model_copy(update={"weights": {}, "default": stable})
    return model
