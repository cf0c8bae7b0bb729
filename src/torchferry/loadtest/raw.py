"""The same archive run in-process: the engine's own speed that a served rate is set against.

For the V2 protocols that is ``runtime.infer`` on the request's arrays repeated to a batch;
for ``/predict`` and TorchServe it is also the archive's handler, as the server runs it: one
``preprocess`` per request, the batch concatenated, ``infer``, one ``postprocess`` per
request.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from torchferry.archive.store import ModelStore
from torchferry.handlers import load_handler
from torchferry.handlers.base import HandlerRequest
from torchferry.loadtest.generator import HttpRequest
from torchferry.loadtest.payloads import Payload
from torchferry.loadtest.target import BenchError
from torchferry.runtimes import load_runtime
from torchferry.runtimes.base import Runtime


def _rows(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` repeated along dim 0 to exactly ``rows`` rows."""
    if array.ndim == 0:
        return array
    copies = math.ceil(rows / max(1, array.shape[0]))
    return np.ascontiguousarray(np.concatenate([array] * copies)[:rows])


class RawEngine:
    """``rate(batch)``: rows per second of the archive in this process at that batch size."""

    def __init__(
        self,
        store: Path,
        model: str,
        version: str | None,
        payload: Payload,
        request: HttpRequest | None,
        route: str | None,
        seconds: float,
    ) -> None:
        if not store.is_dir():
            raise BenchError(f"--raw {store}: not a model store directory")
        try:
            number = int(version) if version else None
        except ValueError:
            raise BenchError(f"--version {version!r}: --raw needs a version number") from None
        if not ModelStore(store).versions(model):
            raise BenchError(f"--raw {store}: the store has no model {model!r}")
        self.archive = ModelStore(store).open(model, number)
        self.payload = payload
        self.seconds = seconds
        self.runtime: Runtime = load_runtime(self.archive)
        self.handler = load_handler(self.archive, trust_code=False) if route else None
        self.request, self.route = request, route
        self._rates: dict[int, float] = {}

    @property
    def max_batch_size(self) -> int:
        return self.archive.manifest.batching.max_batch_size

    def close(self) -> None:
        self.runtime.close()

    def rate(self, batch: int) -> float:
        if batch not in self._rates:
            self._rates[batch] = self._measure(*self._step(batch))
        return self._rates[batch]

    @property
    def rates(self) -> dict[int, float]:
        return dict(sorted(self._rates.items()))

    def _step(self, batch: int) -> tuple[Callable[[], None], int]:
        """One iteration at ``batch`` rows, and the rows it does."""
        if self.handler is None or self.request is None or self.route is None:
            arrays = self.payload.arrays
            if arrays is None:
                raise BenchError("--raw over a V2 protocol needs tensor inputs, not --image")
            batch_inputs = {name: _rows(a, batch) for name, a in arrays.items()}

            def infer() -> None:
                self.runtime.infer(batch_inputs)

            return infer, batch
        handler, body, media, route = (
            self.handler,
            self.request.body,
            self.request.content_type,
            self.route,
        )
        per_request = self.payload.rows
        requests = max(1, batch // per_request)

        def step() -> None:
            # a new HandlerRequest each time: it caches its parsed JSON, as a real one would
            # parse it once per request
            prepared = [
                handler.preprocess(HandlerRequest(body=body, content_type=media, route=route))
                for _ in range(requests)
            ]
            names = prepared[0][0].keys()
            inputs = {n: np.concatenate([p[0][n] for p in prepared]) for n in names}
            outputs = self.runtime.infer(inputs)
            start = 0
            for arrays, state in prepared:
                rows = next(iter(arrays.values())).shape[0]
                handler.postprocess({n: o[start : start + rows] for n, o in outputs.items()}, state)
                start += rows

        return step, requests * per_request

    def _measure(self, step: Callable[[], None], rows: int) -> float:
        step()  # the first run allocates
        done, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < self.seconds or done == 0:
            step()
            done += rows
        return done / elapsed


def equivalent_rate(engine: RawEngine, batches: Counter[int]) -> float | None:
    """Rows per second the engine alone would reach on the same batches the server ran: the
    rows, over the time the engine needs for each of those batches."""
    rows = sum(size * count for size, count in batches.items() if count > 0)
    if rows == 0:
        return None
    seconds = sum(size * count / engine.rate(size) for size, count in batches.items() if count > 0)
    return rows / seconds
