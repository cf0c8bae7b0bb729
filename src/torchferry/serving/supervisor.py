"""The supervisor: N worker processes on shared ports, kept alive, drained together.

It owns the desired state (the settings every worker serves: which models and versions,
batching, threads) and talks to each worker over its control channel (``control.py``).
It never loads a model itself, so it stays small (no torch, no ONNX Runtime) and survives
whatever a model does to a worker.

- **Start**: check and hold the ports (``listen.py``), start every worker, and wait until
  each one serves; a worker that fails before it ever served stops the whole server with
  its error (a bad store fails the same way in every worker).
- **Crash**: a worker that exits on its own (a crash, ``kill -9``, the OOM killer) is
  replaced at once, or after a backoff that doubles while it keeps failing soon after its
  start (0.5 s up to 30 s); the other workers keep serving meanwhile.
- **Drain**: SIGTERM or SIGINT tells every worker to drain; each answers what it accepted,
  then exits. Workers still running after ``--drain-timeout`` (plus a margin for the
  batchers) are killed. A second SIGINT kills them at once.
- **Changes while serving**: the fleet (``lifecycle/fleet.py``) holds the desired state and
  makes each change in every serving worker; a worker (re)started during a change waits
  for it, then starts from the state it left. The management API (its own listener), the
  store poller and the rollouts drive the fleet once the server is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from torchferry.errors import store_unreadable
from torchferry.serving.auth.guard import RequireToken, metrics_needs, open_key_ring
from torchferry.serving.control import Channel, ControlError
from torchferry.serving.http_guard import GuardedServer, http_config
from torchferry.serving.lifecycle.fleet import Fleet
from torchferry.serving.lifecycle.listener import management_listener
from torchferry.serving.lifecycle.poll import StorePoller
from torchferry.serving.lifecycle.workers import WorkerGone
from torchferry.serving.listen import PortGuard, QuietServer, listen_exclusive, reserve
from torchferry.serving.metrics_render import (
    metrics_app,
    new_multiproc_dir,
    render_metrics,
    worker_died,
)
from torchferry.serving.settings import ServerSettings

log = logging.getLogger("torchferry.supervisor")

#: A worker that served this long before it died is restarted at once.
STABLE_AFTER_S = 10.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
#: Beyond ``--drain-timeout`` (which bounds in-flight HTTP and gRPC requests alike, at the
#: same time): the idle connections' grace, the batchers' queues, releasing the runtimes.
DRAIN_MARGIN_S = 10.0


#: How long a worker may take to answer a control command (a hung one is not waited for).
CONTROL_TIMEOUT_S = 10.0


class WorkerFailed(Exception):
    """A worker exited before it ever served."""


@dataclass
class Spare:
    process: asyncio.subprocess.Process
    channel: Channel
    reading: asyncio.Task[None]


@dataclass
class WorkerHandle:
    index: int
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    #: ``starting``, ``serving``, ``draining`` or ``exited``.
    state: str = "exited"
    started_at: float = 0.0
    serving_since: float | None = None
    restarts: int = 0
    #: Consecutive deaths soon after a start (the crash-loop backoff's exponent).
    quick_failures: int = 0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class Supervisor:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.workers = [WorkerHandle(i) for i in range(1, settings.workers + 1)]
        self.draining = False
        self.started_at = time.time()
        self.guards: list[PortGuard] = []
        self.worker_settings = settings
        self.metrics_dir: Path | None = None
        self._stopped = asyncio.Event()
        self._spare: Spare | None = None
        self._listeners: list[tuple[QuietServer, asyncio.Task[None]]] = []
        self._poller: asyncio.Task[None] | None = None
        self.fleet = Fleet(self, settings)
        #: With ``--auth``: the tokens its own listeners (metrics, management) check; read
        #: now, so that a missing or bad key file fails the start with the reason.
        self.keys = open_key_ring(settings.key_path()) if settings.auth else None

    # -- the whole server ------------------------------------------------------------------

    async def run(self) -> int:
        settings = self.settings
        loop = asyncio.get_running_loop()
        metrics_listener: socket.socket | None = None
        management: tuple[Any, socket.socket] | None = None
        try:
            http = reserve(settings.host, settings.port, "HTTP", "--port")
            self.guards.append(http)
            update: dict[str, Any] = {"port": http.port, "share_ports": True}
            update["threads"] = settings.resolved_threads()
            if settings.grpc_port is not None:
                grpc = reserve(settings.host, settings.grpc_port, "gRPC", "--grpc-port")
                self.guards.append(grpc)
                update["grpc_port"] = grpc.port
            if settings.metrics_port is not None:
                # fresh for every run: files left by an earlier one would add to the counters
                self.metrics_dir = new_multiproc_dir()
                metrics_listener = listen_exclusive(
                    settings.host, settings.metrics_port, "metrics", "--metrics-port"
                )
                update["metrics_port"] = metrics_listener.getsockname()[1]  # port 0 resolved
            self.worker_settings = settings.model_copy(update=update)
            management = management_listener(self.fleet, settings, self.keys, server=self)
            try:
                self.fleet.restore()
            except PermissionError as exc:  # a store owned by another user (a volume)
                raise store_unreadable(exc) from None
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
            try:
                await asyncio.gather(*(self._start(worker) for worker in self.workers))
            except WorkerFailed as exc:
                if not self.draining:
                    log.error("%s; stopping", exc, extra={"event": "start_failed"})
                    await self.drain()
                    return 1
            if self.draining:  # a signal came while the workers started: not a failure
                await self._stopped.wait()
                return 0
            # ready only now that every worker serves
            await asyncio.gather(*(self._request(w, "release") for w in self.workers))
            if metrics_listener is not None:
                self._serve(self._metrics_app(), metrics_listener)
                metrics_listener = None  # uvicorn closes it
            if management is not None:
                self._serve(*management)
                management = None
            self._begin_changes()
            self._announce()
            await self._keep_spare()
            await self._stopped.wait()
            return 0
        finally:
            for sock in (metrics_listener, management[1] if management else None):
                if sock is not None:
                    sock.close()
            for server, task in self._listeners:
                server.should_exit = True
                await task
            for guard in self.guards:
                guard.close()
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _metrics_app(self) -> Any:
        """``/metrics``; with ``--auth``, for tokens with the ``metrics`` scope only."""
        app = metrics_app(self.render_metrics)
        return app if self.keys is None else RequireToken(app, self.keys, metrics_needs)

    def _announce(self) -> None:
        ws = self.worker_settings
        grpc = f", gRPC on {ws.host}:{ws.grpc_port}" if ws.grpc_port is not None else ""
        log.info(
            "serving on %s://%s:%d%s with %d worker(s), %d thread(s) each",
            ws.scheme,
            ws.host,
            ws.port,
            grpc,
            len(self.workers),
            ws.resolved_threads(),
            extra={"event": "serving", "workers": len(self.workers)},
        )

    def _serve(self, app: Any, sock: socket.socket) -> None:
        """An app of the supervisor's own on its own listener: ``/metrics`` (every worker's
        numbers summed, each worker's process figures, the supervisor's view of its workers),
        the management API."""
        # a management call waiting on a rollout must not hold up the exit; uvicorn's own
        # start lines would repeat the supervisor's pid once per listener
        config = http_config(
            app,
            self.settings,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        server = GuardedServer(config)
        self._listeners.append((server, asyncio.create_task(server.serve([sock]))))

    def _begin_changes(self) -> None:
        """The server is up: rollouts a restart interrupted go on, the poller starts."""
        self.fleet.rollouts.resume()
        if self.settings.poll_store_s is not None and self.fleet.store is not None:
            poller = StorePoller(self.fleet, self.settings.poll_store_s)
            self._poller = asyncio.create_task(poller.run())

    async def _end_changes(self) -> None:
        """No model change after the drain begins; one in progress ends first (within the
        drain timeout), so that none is half made in the workers that are leaving."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.fleet.rollouts.close()
        try:  # held from here on: a later management call waits, and the server is gone
            await asyncio.wait_for(self.fleet.lock.acquire(), self.settings.drain_timeout_s)
        except TimeoutError:
            log.warning("a model change was still running when the drain began")

    def render_metrics(self) -> tuple[bytes, str]:
        serving = {
            w.index: w.pid for w in self.workers if w.pid is not None and w.state != "exited"
        }
        return render_metrics(self.metrics_dir, serving, self._own_metrics())

    def _own_metrics(self) -> list[Metric]:
        """The supervisor's view of its workers, as metric families."""
        workers = GaugeMetricFamily(
            "torchferry_workers",
            "Worker processes by state, as the supervisor sees them.",
            labels=["state"],
        )
        for state in ("starting", "serving", "draining", "exited"):
            workers.add_metric([state], sum(1 for w in self.workers if w.state == state))
        restarts = CounterMetricFamily(
            "torchferry_worker_restarts", "Workers replaced after they died."
        )
        restarts.add_metric([], sum(w.restarts for w in self.workers))
        uptime = GaugeMetricFamily("torchferry_uptime_seconds", "Seconds since the server started.")
        uptime.add_metric([], time.time() - self.started_at)
        return [workers, restarts, uptime, *self.fleet.rollouts.metrics()]

    def _on_signal(self, sig: int) -> None:
        if self.draining:
            if sig == signal.SIGINT:  # a second Ctrl+C: stop waiting
                log.warning("second interrupt: stopping the workers now")
                self._kill_all()
            return
        log.info("%s: draining", signal.Signals(sig).name, extra={"event": "drain"})
        asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        """Tell every worker to drain, wait for them to exit (killing stragglers), stop."""
        if self.draining:
            await self._stopped.wait()
            return
        self.draining = True
        try:
            await self._end_changes()
            await self._drain_workers()
        finally:
            self._stopped.set()

    async def _drain_workers(self) -> None:
        self._release_spare()
        draining = [w for w in self.workers if w.state in ("starting", "serving")]
        for worker in draining:
            worker.state = "draining"
        # every port closes before any client is told to reconnect (see Worker.stop_listening)
        await asyncio.gather(*(self._request(w, "stop_listening") for w in draining))
        for worker in draining:
            task = asyncio.create_task(self._request(worker, "drain"))
            worker.tasks.add(task)
            task.add_done_callback(worker.tasks.discard)
        deadline = self.settings.drain_timeout_s + DRAIN_MARGIN_S
        waits = [w.process.wait() for w in self.workers if w.process is not None]
        if waits:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(w) for w in waits], timeout=deadline
            )
            if pending:
                log.error("workers still running after the drain timeout: killing them")
                self._kill_all()
                await asyncio.wait(pending)

    def _kill_all(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.kill()

    # -- one worker ------------------------------------------------------------------------

    async def _spawn(self) -> Spare:
        """A new worker process with its channel open: it imports the serving stack, then
        waits for ``start``."""
        parent, child = socket.socketpair()
        env = {**os.environ}
        if self.metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        command = [sys.executable, "-m", "torchferry.serving.worker"]
        command += ["--control-fd", str(child.fileno())]
        try:
            process = await asyncio.create_subprocess_exec(
                *command, pass_fds=(child.fileno(),), env=env
            )
        finally:
            child.close()
        channel = await Channel.open(parent)
        reading = asyncio.create_task(channel.serve(on_event=self._on_event))
        return Spare(process, channel, reading)

    async def _start(self, worker: WorkerHandle) -> None:
        """Start a worker, from the warm spare when there is one, and wait until it serves
        (``WorkerFailed`` if it exits first)."""
        spare, self._spare = self._spare, None
        if spare is None or spare.process.returncode is not None or spare.channel.closed.is_set():
            spare = await self._spawn()
        if self.draining:  # the drain began while it started: it must not outlive the drain
            spare.channel.close()
            raise WorkerFailed(f"worker {worker.index} was not started: the server drains")
        worker.process, worker.channel = spare.process, spare.channel
        worker.state = "starting"
        worker.started_at = time.monotonic()
        worker.serving_since = None
        log.info(
            "worker %d started (pid %d)",
            worker.index,
            worker.pid,
            extra={"event": "worker_started", "worker": worker.index, "pid": worker.pid},
        )
        watching = asyncio.create_task(self._watch(worker, spare.process))
        worker.tasks.update((spare.reading, watching))
        spare.reading.add_done_callback(worker.tasks.discard)
        watching.add_done_callback(worker.tasks.discard)
        settings = self.worker_settings.model_dump(mode="json")
        state = self.fleet.start_state()
        try:
            status = await worker.channel.request(
                "start", worker=worker.index, settings=settings, state=state
            )
        except ControlError:  # it exited, or refused what to serve (then it must go)
            try:
                code = await asyncio.wait_for(worker.process.wait(), CONTROL_TIMEOUT_S)
            except TimeoutError:
                worker.process.kill()
                code = await worker.process.wait()
            raise WorkerFailed(
                f"worker {worker.index} exited with {_describe_exit(code)} before it served"
            ) from None
        await self.fleet.joined(worker.index, status or {})
        if worker.state == "starting":
            worker.state = "serving"
            worker.serving_since = time.monotonic()
            log.info(
                "worker %d serving (pid %d)",
                worker.index,
                worker.pid,
                extra={"event": "worker_serving", "worker": worker.index, "pid": worker.pid},
            )

    async def _on_event(self, name: str, fields: dict[str, Any]) -> None:
        log.debug("worker event %s %s", name, fields)

    async def _keep_spare(self) -> None:
        """Have a warm spare ready: a worker process that has imported everything and waits.
        A crashed worker's replacement then only loads its models (no interpreter start, no
        imports: seconds saved on a small machine, while the other workers are busy)."""
        if self._spare is None and not self.draining and self.settings.warm_spare:
            spare = await self._spawn()
            if self.draining or self._spare is not None:
                spare.channel.close()
            else:
                self._spare = spare

    def _release_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.channel.close()  # it exits when its channel closes

    async def _watch(self, worker: WorkerHandle, process: asyncio.subprocess.Process) -> None:
        """Wait for the worker's exit; replace it unless the server drains."""
        code = await process.wait()
        if worker.process is not process:
            return
        now = time.monotonic()
        lived = now - worker.started_at
        served = now - worker.serving_since if worker.serving_since is not None else 0.0
        was_serving = worker.serving_since is not None
        worker.state = "exited"
        if worker.channel is not None:
            worker.channel.close()
        if self.metrics_dir is not None:
            worker_died(process.pid, self.metrics_dir)  # its live gauges leave the sum
        fields = {"worker": worker.index, "pid": process.pid, "exit_code": code}
        if self.draining:
            log.info(
                "worker %d exited (%s)",
                worker.index,
                _describe_exit(code),
                extra={"event": "worker_exited", **fields},
            )
            return
        log.error(
            "worker %d died (%s) after %.1f s",
            worker.index,
            _describe_exit(code),
            lived,
            extra={"event": "worker_died", **fields},
        )
        if not was_serving and worker.restarts == 0:
            return  # the first start failed: _start reports it and the server stops
        if served >= STABLE_AFTER_S:
            worker.quick_failures = 0
        delay = 0.0
        if worker.quick_failures:
            delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (worker.quick_failures - 1))
        worker.quick_failures += 1
        if delay:
            log.warning(
                "worker %d keeps failing: restarting it in %.1f s",
                worker.index,
                delay,
                extra={"event": "worker_backoff", "worker": worker.index, "delay_s": delay},
            )
            await asyncio.sleep(delay)
        if self.draining:
            return
        worker.restarts += 1
        log.info(
            "restarting worker %d (restart %d)",
            worker.index,
            worker.restarts,
            extra={"event": "worker_restart", "worker": worker.index, "restarts": worker.restarts},
        )
        try:
            async with self.fleet.lock:  # after the change in progress: start from its result
                await self._start(worker)
        except WorkerFailed as exc:
            log.error("%s", exc)  # its own _watch schedules the next attempt
            return
        await self._request(worker, "release")
        await self._keep_spare()

    # -- the fleet's view of the workers (lifecycle.workers.Workers) -------------------------

    def serving(self) -> list[int]:
        return [w.index for w in self.workers if w.state == "serving"]

    async def ask(self, index: int, op: str, timeout: float, **args: Any) -> Any:
        channel = self.workers[index - 1].channel
        if channel is None or channel.closed.is_set():
            raise WorkerGone(f"worker {index} is not running")
        try:
            return await channel.request(op, timeout=timeout, **args)
        except ControlError:
            if channel.closed.is_set():
                raise WorkerGone(f"worker {index} exited during {op}") from None
            raise

    async def _request(self, worker: WorkerHandle, op: str, **args: Any) -> Any:
        if worker.channel is None:
            return None
        try:
            return await worker.channel.request(op, timeout=CONTROL_TIMEOUT_S, **args)
        except (ControlError, TimeoutError) as exc:
            log.warning("worker %d did not answer %s: %s", worker.index, op, exc or "timeout")
            return None


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
