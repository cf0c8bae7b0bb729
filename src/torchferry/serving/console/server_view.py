"""What the supervisor offers the console about itself (``supervisor.Supervisor`` is one):
its workers, when it started, where the workers write their metrics, and the settings its
workers run with (the real ports: a port 0 is resolved there). Under Ray Serve there is no
such process, and the console is given none."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from torchferry.serving.settings import ServerSettings


class WorkerView(Protocol):
    """One worker process (``supervisor.WorkerHandle``); its times are ``time.monotonic()``."""

    @property
    def index(self) -> int: ...
    @property
    def pid(self) -> int | None: ...
    #: ``starting``, ``serving``, ``draining`` or ``exited``.
    @property
    def state(self) -> str: ...
    @property
    def restarts(self) -> int: ...
    @property
    def started_at(self) -> float: ...
    @property
    def serving_since(self) -> float | None: ...


class ServerView(Protocol):
    @property
    def workers(self) -> Sequence[WorkerView]: ...
    #: ``time.time()`` at the start.
    @property
    def started_at(self) -> float: ...
    #: The workers' ``PROMETHEUS_MULTIPROC_DIR``; None with ``--no-metrics``.
    @property
    def metrics_dir(self) -> Path | None: ...
    @property
    def worker_settings(self) -> ServerSettings: ...
