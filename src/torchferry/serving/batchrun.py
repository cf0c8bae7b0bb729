"""Running one batch: its inputs merged, the model called, its outputs split row for row,
and the requests' finish steps (a handler's postprocess) run off the event loop, their
results or failures carried back and settled on the requests' futures.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchferry.errors import ModelError, ModelNotReady, TorchferryError
from torchferry.serving.batchqueue import QueuedRequest

#: Each request's answer (``PENDING`` for a finish step still to come), when the model
#: finished, the model's own seconds, and the pending finish steps' future.
Computed = tuple[list[Any], float, float, "Future[list[Any]] | None"]


def compute(
    infer: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    batch: list[QueuedRequest],
    finish_here: bool,
) -> Computed:
    """Run the batch through ``infer``, split the outputs row for row, and finish the
    requests that have a finish step.

    A lone request (``finish_here``: nothing queued behind it) finishes here, with no
    hand-off (the lowest latency when idle). Otherwise the batch's finish steps go to their
    executor as one task, one hand-off for the whole batch, so that the next batch starts at
    once."""
    if len(batch) == 1:
        inputs = batch[0].inputs
    else:
        inputs = {
            name: np.concatenate([r.inputs[name] for r in batch], axis=0)
            for name in batch[0].inputs
        }
    rows = sum(r.rows for r in batch)
    begun = time.perf_counter()
    outputs = infer(inputs)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != rows:
            raise ModelError(
                f"output {name!r} has shape {list(array.shape)}, "
                f"which does not keep the batch dimension of {rows} rows"
            )
    computed = time.perf_counter()
    model_s = computed - begun  # the model alone, not the hand-off
    answers: list[Any] = [outputs]
    if len(batch) > 1:
        bounds = [0, *itertools.accumulate(r.rows for r in batch)]
        answers = [
            {name: array[start:end] for name, array in outputs.items()}
            for start, end in itertools.pairwise(bounds)
        ]
    steps = [(i, r.finish) for i, r in enumerate(batch) if r.finish is not None]
    if not steps:
        return answers, computed, model_s, None
    if len(batch) == 1 and finish_here:
        return [run_finish(steps[0][1][1], answers[0])], computed, model_s, None
    executor = steps[0][1][0]  # one model, one pool
    work = [(finish[1], answers[i]) for i, finish in steps]
    for i, _ in steps:
        answers[i] = PENDING
    return answers, computed, model_s, executor.submit(run_finishes, work)


def model_failure(name: str, exc: Exception) -> TorchferryError:
    """The error a request sees when the model raised on it: the client's answer carries the
    model's message; a log line only its kind, since a model's (or its runtime's) message
    may quote the request's values."""
    failed = f"model {name!r} failed: "
    if isinstance(exc, ModelError):  # the runtime already put the model's message in words
        return ModelError(failed + exc.message, log_message=failed + exc.log_message)
    if isinstance(exc, TorchferryError):
        return exc
    message = str(exc) or type(exc).__name__
    return ModelError(
        f"{failed}{type(exc).__name__}: {message}", log_message=failed + type(exc).__name__
    )


@dataclass
class Failed:
    """A finish step's exception, carried back to the event loop."""

    error: BaseException


#: The answer of a request whose finish step is still running on its executor.
PENDING = object()


def run_finish(finish: Callable[[dict[str, np.ndarray]], Any], outputs: dict[str, Any]) -> Any:
    try:
        return finish(outputs)
    except Exception as exc:
        return Failed(exc)


def run_finishes(work: list[tuple[Callable[[dict[str, np.ndarray]], Any], Any]]) -> list[Any]:
    return [run_finish(finish, outputs) for finish, outputs in work]


def settle(future: asyncio.Future[Any], answer: Any) -> None:
    """Answer a request, unless its caller gave up."""
    if future.done():
        return
    if isinstance(answer, Failed):
        future.set_exception(answer.error)
    else:
        future.set_result(answer)


def settle_all(pending: list[QueuedRequest]) -> Callable[[asyncio.Future[list[Any]]], None]:
    """Answer the requests whose finish steps ran together on the executor."""

    def settle_finished(finished: asyncio.Future[list[Any]]) -> None:
        if finished.cancelled():  # the executor shut down first
            answers: list[Any] = [Failed(ModelNotReady("the server is shutting down"))] * len(
                pending
            )
        elif (error := finished.exception()) is not None:
            answers = [Failed(error)] * len(pending)
        else:
            answers = finished.result()
        for request, answer in zip(pending, answers, strict=True):
            settle(request.future, answer)

    return settle_finished
