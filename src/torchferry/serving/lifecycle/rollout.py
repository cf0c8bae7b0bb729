"""Canary rollouts that roll back by themselves.

A rollout moves a model's unversioned traffic from the stable version (its effective default
when the rollout starts) to the canary, step by step (weights ``{stable: 100 - w, canary:
w}``); reaching 100 promotes the canary to default. With ``min_agreement``, a shadow check
comes first: the canary sees a mirrored share of the traffic until it has compared
``min_requests`` rows, and must agree that well with the answers the clients got.

Every tick (1 s) the figures of every worker are read (``stats`` with drain: counters since
the version was loaded, and the latency samples since the previous read) and accumulated over
the step. The step is judged as soon as the canary has ``min_requests`` in it: a threshold
broken rolls back at once; passing advances once ``interval_s`` has also passed. Every
transition is a ``RolloutDecision`` with the figures that decided it, saved in the state file
(a restart resumes a running rollout at its step, with a fresh interval), logged as an event
and shown by the ``torchferry_rollout_*`` metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric

from torchferry.errors import Conflict, ModelNotFound
from torchferry.serving.lifecycle.judging import Window, judge
from torchferry.serving.lifecycle.state import (
    DesiredState,
    Figures,
    RolloutDecision,
    RolloutSpec,
    RolloutStatus,
    Routes,
    Shadow,
)

log = logging.getLogger("torchferry.lifecycle")

#: The values of ``torchferry_rollout_state``.
PHASE_VALUES = {"pending": 0, "stepping": 1, "promoted": 2, "rolled_back": 3, "aborted": 4}
EVENTS = {
    "advance": "rollout_step",
    "promote": "rollout_promoted",
    "rollback": "rollout_rolled_back",
    "abort": "rollout_aborted",
}


class RolloutHost(Protocol):
    """What a rollout needs from the fleet."""

    lock: asyncio.Lock
    state: DesiredState

    def effective_default(self, name: str) -> int: ...

    async def worker_stats(
        self, name: str, drain: bool
    ) -> dict[int, dict[int, dict[str, Any]]]: ...

    async def route_rollout(self, name: str, routes: Routes | None) -> None: ...

    def save(self) -> None: ...


class Rollouts:
    def __init__(self, host: RolloutHost, *, tick_s: float = 1.0) -> None:
        self.host = host
        self.tick_s = tick_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ended: dict[str, asyncio.Event] = {}

    def status(self, name: str) -> RolloutStatus | None:
        model = self.host.state.models.get(name)
        rollout = model.rollout if model is not None else None
        return rollout.model_copy(deep=True) if rollout is not None else None

    async def start(self, name: str, spec: RolloutSpec) -> RolloutStatus:
        host = self.host
        async with host.lock:
            model = host.state.models.get(name)
            if model is None or not model.versions:
                raise ModelNotFound(f"model {name} has no loaded version")
            if model.rollout is not None and model.rollout.running:
                raise Conflict(
                    f"a rollout of model {name} to version {model.rollout.spec.version} "
                    "is running: abort it first"
                )
            if spec.version not in model.versions:
                raise Conflict(
                    f"model {name} version {spec.version} is not loaded: "
                    f"load version {spec.version} first"
                )
            stable = host.effective_default(name)
            if stable == spec.version:
                raise Conflict(f"model {name} version {spec.version} already is the default")
            now = time.time()
            status = RolloutStatus(spec=spec, stable=stable, started_at=now, updated_at=now)
            if spec.min_agreement is not None:
                shadow = Shadow(version=spec.version, share=spec.shadow_share)
                routes = Routes(default=stable, shadow=shadow)
            else:
                routes = _enter(status, 0, model.routes)
            await host.route_rollout(name, routes)
            model.rollout = status
            host.save()
        self._log(name, status, "started", "rollout_started")
        if status.running:
            self._run(name, status.started_at)
        else:  # a single step of 100: promoted at once
            self._ended.setdefault(name, asyncio.Event()).set()
        return status.model_copy(deep=True)

    async def abort(self, name: str) -> RolloutStatus:
        return await self._end_now(name, "abort", "aborted by a management call")

    async def promote(self, name: str) -> RolloutStatus:
        """Skip the remaining steps: the canary becomes the default at once."""
        return await self._end_now(name, "promote", "promoted by a management call")

    async def _end_now(self, name: str, verdict: str, reason: str) -> RolloutStatus:
        """A management call's verdict on the running rollout (409 when none runs)."""
        status = await self._decide(name, verdict, reason, None)
        if status is None:
            raise Conflict(f"model {name} has no rollout running")
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
        return status

    async def wait(self, name: str) -> RolloutStatus:
        """The rollout's status once it is no longer running."""
        while True:
            status = self.status(name)
            if status is None:
                raise ModelNotFound(f"model {name} has no rollout")
            if not status.running:
                return status
            await self._ended.setdefault(name, asyncio.Event()).wait()

    def resume(self) -> None:
        """Go on with the rollouts a restart interrupted, each at its step."""
        for name, model in self.host.state.models.items():
            if model.rollout is not None and model.rollout.running:
                log.info("resuming the rollout of model %s at %d%%", name, model.rollout.weight)
                self._run(name, model.rollout.started_at)

    async def close(self) -> None:
        """Stop ticking (the saved state keeps running rollouts running, for a restart)."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def metrics(self) -> list[Metric]:
        state = GaugeMetricFamily(
            "torchferry_rollout_state",
            "Rollout phase: 0 pending, 1 stepping, 2 promoted, 3 rolled back, 4 aborted.",
            labels=["model", "version"],
        )
        weight = GaugeMetricFamily(
            "torchferry_rollout_canary_weight",
            "The canary's share of the traffic, percent.",
            labels=["model", "version"],
        )
        for name, model in sorted(self.host.state.models.items()):
            rollout = model.rollout
            if rollout is not None:
                labels = [name, str(rollout.spec.version)]
                state.add_metric(labels, PHASE_VALUES[rollout.phase])
                weight.add_metric(labels, rollout.weight)
        return [state, weight]

    # -- the loop --------------------------------------------------------------------------

    def _run(self, name: str, started_at: float) -> None:
        self._ended.setdefault(name, asyncio.Event()).clear()
        previous = self._tasks.pop(name, None)
        if previous is not None:  # an ended rollout's loop, not yet out of its sleep
            previous.cancel()
        task = asyncio.get_running_loop().create_task(self._tick(name, started_at))
        self._tasks[name] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(name) is done:
                del self._tasks[name]

        task.add_done_callback(forget)

    async def _tick(self, name: str, started_at: float) -> None:
        """Judge one rollout (the one started at ``started_at``) until it ends."""
        window: Window | None = None
        while (status := self.status(name)) is not None and status.running:
            if status.started_at != started_at:
                return
            try:
                figures = await self.host.worker_stats(name, drain=True)
            except Exception as exc:
                log.warning("rollout of model %s: no figures: %s", name, exc)
                await asyncio.sleep(self.tick_s)
                continue
            if window is None:  # the first read only sets where the step's counts start
                window = Window(figures)
            else:
                window.add(figures)
                canary, stable = window.figures(status.spec.version), window.figures(status.stable)
                verdict = judge(status, canary, stable, window.elapsed())
                if verdict is not None:
                    try:
                        await self._decide(
                            name, verdict[0], verdict[1], (canary, stable), started_at
                        )
                    except Exception as exc:  # a worker refused the routes: try again
                        log.error("rollout of model %s: %s", name, exc)
                        await asyncio.sleep(self.tick_s)
                        continue
                    window = window.fresh()
            await asyncio.sleep(self.tick_s)

    async def _decide(
        self,
        name: str,
        verdict: str,
        reason: str,
        figures: tuple[Figures, Figures] | None,
        started_at: float | None = None,
    ) -> RolloutStatus | None:
        """Apply a verdict to the running rollout (to the one started at ``started_at``
        only, when given: a verdict on an earlier rollout never reaches a later one)."""
        host = self.host
        async with host.lock:
            model = host.state.models.get(name)
            if model is None or model.rollout is None or not model.rollout.running:
                return None
            if started_at is not None and model.rollout.started_at != started_at:
                return None
            status = model.rollout.model_copy(deep=True)
            canary, stable = figures or (Figures(), Figures())
            decision = RolloutDecision(
                at=time.time(),
                step=status.step,
                weight=status.weight,
                verdict="abort",
                reason=reason,
                canary=canary,
                stable=stable,
            )
            if verdict in ("advance", "promote"):
                # a promotion jumps to the last step (100%), which promotes
                step = status.step + 1 if verdict == "advance" else len(status.spec.steps) - 1
                routes = _enter(status, step, model.routes)
                decision.verdict = "promote" if status.phase == "promoted" else "advance"
            else:
                routes = _back(status, model.routes)
                status.phase = "rolled_back" if verdict == "rollback" else "aborted"
                status.reason = reason
                decision.verdict = "rollback" if verdict == "rollback" else "abort"
            if status.phase == "promoted":
                status.reason = reason
            status.history.append(decision)
            status.updated_at = decision.at
            await host.route_rollout(name, routes)
            model.rollout = status
            host.save()
        self._log(name, status, reason, EVENTS[decision.verdict])
        if not status.running:
            self._ended.setdefault(name, asyncio.Event()).set()
        return status.model_copy(deep=True)

    def _log(self, name: str, status: RolloutStatus, reason: str, event: str) -> None:
        level = logging.WARNING if status.phase == "rolled_back" else logging.INFO
        log.log(
            level,
            "rollout of model %s to version %d: %s, %d%% (%s)",
            name,
            status.spec.version,
            status.phase.replace("_", " "),
            status.weight,
            reason,
            extra={
                "event": event,
                "model": name,
                "version": status.spec.version,
                "stable": status.stable,
                "phase": status.phase,
                "weight": status.weight,
                "reason": reason,
            },
        )


def _enter(status: RolloutStatus, step: int, current: Routes) -> Routes:
    """Move ``status`` to ``step`` (the last, 100%, promotes) and return the routes for it."""
    canary, stable = status.spec.version, status.stable
    shadow = _other_shadow(current, canary)
    weight = status.spec.steps[step]
    status.step, status.weight = step, weight
    if weight >= 100:
        status.phase = "promoted"
        return Routes(default=canary, shadow=shadow)
    status.phase = "stepping"
    return Routes(default=stable, weights={stable: 100 - weight, canary: weight}, shadow=shadow)


def _back(status: RolloutStatus, current: Routes) -> Routes:
    """Every unversioned request back to the stable version."""
    status.weight = 0
    return Routes(default=status.stable, shadow=_other_shadow(current, status.spec.version))


def _other_shadow(current: Routes, canary: int) -> Shadow | None:
    """The model's shadow, kept through a rollout unless it mirrors to the canary itself."""
    shadow = current.shadow
    return shadow if shadow is not None and shadow.version != canary else None
