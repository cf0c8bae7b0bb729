"""A batch's answers on their way back: finish steps (a handler's postprocess) run off the
event loop, their results or failures carried back and settled on the requests' futures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchferry.errors import ModelError, ModelNotReady, TorchferryError
from torchferry.serving.batchqueue import QueuedRequest


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
