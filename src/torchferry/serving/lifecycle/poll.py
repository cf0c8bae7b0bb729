"""``--poll-store SECONDS``: follow the store. Every interval, each model converges on its
version policy over the versions the store has: new version directories are loaded (a
partly copied one fails its hash check in the worker and is never served: its failure is
logged once and the load retried at the next poll), versions gone from the store are
unloaded, and versions the policy no longer selects are unloaded once the ones it selects
serve. A model whose versions a management call chose (policy ``specific``) keeps them.
"""

from __future__ import annotations

import asyncio
import logging

from torchferry.errors import ModelNotFound, TorchferryError
from torchferry.serving.lifecycle.fleet import Fleet
from torchferry.store_layout import store_models, store_versions

log = logging.getLogger("torchferry.lifecycle")


class StorePoller:
    def __init__(self, fleet: Fleet, interval_s: float) -> None:
        self.fleet = fleet
        self.interval_s = interval_s
        #: Versions whose failure was logged: not logged again until they load or leave.
        self._failed: set[tuple[str, int]] = set()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll()
            except Exception:  # the poller must outlive any one bad poll
                log.exception("polling the model store failed")

    async def poll(self) -> None:
        fleet = self.fleet
        store = fleet.store
        if store is None:
            return
        wanted = fleet.settings.models
        names = set(wanted or store_models(store)) | set(fleet.state.models)
        for name in sorted(names):
            if wanted and name not in wanted:
                continue
            try:
                outcome = await fleet.converge(name, strict=False)
            except ModelNotFound:  # neither in the store nor loaded
                continue
            except TorchferryError as exc:
                log.warning("polling model %s: %s", name, exc.message)
                continue
            present = set(store_versions(store, name))
            self._failed = {
                (n, v)
                for n, v in self._failed
                if n != name or (v in present and v not in outcome.versions)
            }
            for version, reason in sorted(outcome.failures.items()):
                if (name, version) in self._failed:
                    log.debug("model %s version %d still fails to load: %s", name, version, reason)
                    continue
                self._failed.add((name, version))
                log.warning(
                    "model %s version %d in the store did not load (retried at every poll): %s",
                    name,
                    version,
                    reason,
                    extra={"event": "poll_load_failed", "model": name, "version": version},
                )
