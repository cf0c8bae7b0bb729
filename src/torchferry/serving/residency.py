"""Which model versions have their engines in memory, under a budget (``--memory-budget``).

With a budget, every version is registered at start (manifest, signature, handler, batcher,
routes) but its runtimes are *not resident*: the first request that needs one waits while
it loads (``ensure``), in a thread, so the event loop keeps serving other models. Requests
for a version that is already loading share that load. Before a load that would pass the
budget, the least recently used resident versions that are *idle* (no request in flight,
nothing queued, no batch computing) are released (their runtimes' ``close``; they stay
registered and load again on their next request). When nothing can be released (every
resident version is busy), the load waits for one to become idle, up to
``--request-timeout`` or ``ROOM_WAIT_S`` (each request sharing it stops waiting at its own
deadline); then 503 ``Overloaded`` with ``Retry-After``.

The size of a version is an estimate made before it loads: the bytes of its graph (or
weights) files on disk, with their external data, times its engine instances unless they
map one shared copy. It is what the budget counts; the RSS a load added is logged beside it (``model_resident``), not used: with
loads in parallel threads and allocators that keep freed pages, that growth is not the
model's alone (see docs/memory.md for the figures).

The budget is per worker process: each worker keeps its own engines.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

from torchferry.archive.store import Archive
from torchferry.errors import InferenceTimeout, ModelError, Overloaded, TorchferryError
from torchferry.runtimes import Runtime
from torchferry.serving import metrics
from torchferry.serving.build import warm_up_inputs
from torchferry.serving.observe import current_record
from torchferry.signature import ModelSignature

log = logging.getLogger("torchferry.residency")

#: The longest a load waits for room when neither the request nor the server sets a limit.
ROOM_WAIT_S = 30.0
#: How often a load that waits for room looks again for an idle version to release (a
#: poll: the request path then pays nothing to announce that a version became idle).
ROOM_POLL_S = 0.005


class Resident(Protocol):
    """What residency needs of a version (``repository.LoadedModel``)."""

    inflight: int
    resident: bool
    size_bytes: int

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def signature(self) -> ModelSignature: ...
    @property
    def runtimes(self) -> Sequence[Runtime]: ...
    @property
    def batcher(self) -> Any: ...


def estimate_bytes(
    archive: Archive, runtime: str, instances: int = 1, shares_weights: bool = False
) -> int:
    """The memory a version's engines will take, estimated before they load: its graph file
    for ``runtime`` (an eager model's weights) and the files beside it that carry its data
    (``model.onnx.data``), times ``instances`` unless they share one mapped copy of the
    weights (``shares_weights``: the instances of one process map the same file)."""
    manifest = archive.manifest
    size = sum(manifest.files[name].size for name in manifest.graph_files(runtime))
    if size == 0:  # a manifest without its files' sizes: what the disk says
        size = archive.file(manifest.graph_file(runtime)).stat().st_size
    return size if shares_weights else size * max(1, instances)


def load_engines(runtimes: Sequence[Runtime], signature: ModelSignature) -> None:
    """Load each runtime and run one warm-up inference (as a load while serving does);
    a failure closes them all and raises."""
    try:
        for runtime in runtimes:
            runtime.load()
            runtime.infer(warm_up_inputs(signature))
    except BaseException:
        for runtime in runtimes:
            runtime.close()
        raise


def _rss_bytes() -> int:
    """This process's resident set, from ``/proc`` (0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _label(model: Resident) -> str:
    return f"model {model.name!r} version {model.version}"


def _size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 1024:.1f} KiB"


class Residency:
    """The resident versions of one worker process, least recently used first."""

    def __init__(
        self, budget_bytes: int, request_timeout_s: float | None, metrics_on: bool
    ) -> None:
        self.budget_bytes = budget_bytes
        #: How long a load waits for room when its request has no deadline.
        self.room_wait_s = request_timeout_s or ROOM_WAIT_S
        self.metrics_on = metrics_on
        #: Bytes of resident versions and of loads in progress (reserved before they start).
        self.used_bytes = 0
        self._lru: OrderedDict[Resident, None] = OrderedDict()
        self._loads: dict[Resident, asyncio.Future[None]] = {}
        #: Loads still waiting for room (not loading yet).
        self._waiting: set[Resident] = set()
        #: Versions released (``forget``) while they loaded: closed when their load ends.
        self._released: set[Resident] = set()
        self._report()

    # -- registration ------------------------------------------------------------------------

    def check_fits(self, label: str, size: int) -> None:
        """Refuse a version larger than the whole budget (it could never load)."""
        if size > self.budget_bytes:
            raise TorchferryError(
                f"{label} needs about {_size(size)}, more than the whole memory budget "
                f"({_size(self.budget_bytes)}, --memory-budget); raise the budget or serve "
                "it elsewhere"
            )

    def register(self, model: Resident) -> None:
        """A version registered without its engines: they load on its first request."""
        self.check_fits(_label(model), model.size_bytes)
        model.resident = False

    async def reserve(self, label: str, size: int) -> None:
        """Room for a version about to load outside ``ensure`` (a management load, which
        builds and warms it up itself): release idle versions, or wait, as a cold load does.
        Then ``adopt`` the version, or ``unreserve`` if its build failed."""
        self.check_fits(label, size)
        await self._make_room(label, size, None)

    def unreserve(self, size: int) -> None:
        self.used_bytes -= size
        self._report()

    def adopt(self, model: Resident) -> None:
        """A version built with its engines loaded, into whose room ``reserve`` made."""
        model.resident = True
        self._lru[model] = None
        self._report()

    def forget(self, model: Resident) -> None:
        """A version released for good (unloaded, retired, discarded): its room is free (a
        load in progress releases it when it ends)."""
        if model in self._loads:
            self._released.add(model)
        if model in self._lru:
            del self._lru[model]
            self.used_bytes -= model.size_bytes
            self._report()
        model.resident = False

    # -- requests ----------------------------------------------------------------------------

    async def ensure(self, model: Resident, deadline: float | None) -> None:
        """Return once ``model``'s engines are loaded, loading them if they are not (requests
        for it meanwhile share the load); the request's record gets the seconds it waited.

        The caller counts the request in ``model.inflight`` first, so that the version
        cannot be released between its load and the request's batch."""
        if model.resident:
            self._lru.move_to_end(model)
            return
        started = time.perf_counter()
        load = self._loads.get(model)
        if load is None:
            # the load waits for room up to the server's limit, not the first caller's
            # deadline: the requests sharing it each stop at their own (below)
            load = asyncio.ensure_future(self._load(model))
            self._loads[model] = load
            load.add_done_callback(functools.partial(self._loaded, model))
        if deadline is not None:
            await asyncio.wait([load], timeout=max(0.0, deadline - time.monotonic()))
            if not load.done():  # the load goes on for the requests that share it
                if model in self._waiting:
                    raise self._full(_label(model))
                raise InferenceTimeout(
                    f"the request's deadline passed while {_label(model)} was loading"
                )
        await asyncio.shield(load)
        record = current_record()
        if record is not None:
            record.cold_load_s = time.perf_counter() - started

    def _loaded(self, model: Resident, load: asyncio.Future[None]) -> None:
        del self._loads[model]
        self._released.discard(model)
        if not load.cancelled():
            load.exception()  # retrieved: requests that gave up before it ended never read it

    async def _load(self, model: Resident) -> None:
        size = model.size_bytes
        self._waiting.add(model)
        try:
            await self._make_room(_label(model), size, None)
        finally:
            self._waiting.discard(model)
        started = time.perf_counter()
        rss = _rss_bytes()
        try:
            await asyncio.to_thread(load_engines, model.runtimes, model.signature)
        except Exception as exc:
            self.unreserve(size)
            cause = exc.message if isinstance(exc, TorchferryError) else repr(exc)
            raise ModelError(f"{_label(model)} could not be loaded: {cause}") from exc
        seconds = time.perf_counter() - started
        grown = _rss_bytes() - rss
        if model in self._released:  # released for good while it loaded
            self._released.discard(model)
            for runtime in model.runtimes:
                runtime.close()
            self.unreserve(size)
            return
        self.adopt(model)
        if self.metrics_on:
            metrics.cold_loaded(model.name, str(model.version), seconds)
        log.info(
            "%s resident in %.3f s (estimated %s, RSS grew %s; %s of %s used)",
            _label(model),
            seconds,
            _size(size),
            _size(max(0, grown)),
            _size(self.used_bytes),
            _size(self.budget_bytes),
            extra={
                "event": "model_resident",
                "model": model.name,
                "version": str(model.version),
                "load_seconds": round(seconds, 4),
                "size_bytes": size,
                "rss_growth_bytes": grown,
                "used_bytes": self.used_bytes,
                "budget_bytes": self.budget_bytes,
            },
        )

    async def _make_room(self, label: str, size: int, deadline: float | None) -> None:
        """Reserve ``size`` bytes, releasing idle versions (least recently used first) until
        they fit; with none idle, wait for one, until the deadline (then 503)."""
        limit = deadline if deadline is not None else time.monotonic() + self.room_wait_s
        while self.used_bytes + size > self.budget_bytes:
            victim = self._idle_victim()
            if victim is not None:
                self.evict(victim)
                continue
            left = limit - time.monotonic()
            if left <= 0:
                raise self._full(label)
            await asyncio.sleep(min(ROOM_POLL_S, left))
        self.used_bytes += size
        self._report()

    def _full(self, label: str) -> Overloaded:
        busy = ", ".join(f"{m.name}:{m.version}" for m in self._lru) or "other loads"
        return Overloaded(
            f"{label} cannot load: the memory budget ({_size(self.budget_bytes)}) is full of "
            f"busy models ({busy}); retry later",
            retry_after=1.0,
        )

    def _idle_victim(self) -> Resident | None:
        for model in self._lru:  # least recently used first
            # a batch whose callers gave up still runs on an instance: not idle until it ends
            batcher = model.batcher
            if model.inflight == 0 and batcher.queued_rows == 0 and batcher.computing == 0:
                return model
        return None

    def evict(self, model: Resident) -> None:
        """Release an idle version's engines; it stays registered and loads again on its
        next request."""
        del self._lru[model]
        model.resident = False
        self.used_bytes -= model.size_bytes
        for runtime in model.runtimes:
            runtime.close()
        self._report()
        if self.metrics_on:
            metrics.evicted(model.name, str(model.version))
        log.info(
            "%s evicted (%s; %s of %s used)",
            _label(model),
            _size(model.size_bytes),
            _size(self.used_bytes),
            _size(self.budget_bytes),
            extra={
                "event": "model_evicted",
                "model": model.name,
                "version": str(model.version),
                "size_bytes": model.size_bytes,
                "used_bytes": self.used_bytes,
                "budget_bytes": self.budget_bytes,
            },
        )

    def resident(self) -> list[Resident]:
        """The resident versions, least recently used first."""
        return list(self._lru)

    def status(self) -> dict[str, Any]:
        """This worker's budget as plain JSON (its status to the supervisor)."""
        return {
            "budget_bytes": self.budget_bytes,
            "used_bytes": self.used_bytes,
            "resident": [{"name": m.name, "version": m.version} for m in self._lru],
        }

    def _report(self) -> None:
        if self.metrics_on:
            metrics.resident_bytes(self.used_bytes)
