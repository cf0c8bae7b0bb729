"""What the fleet needs from the workers: the indexes of the serving ones, and one command
sent to one of them. The supervisor provides it over the control channels; tests provide
in-process workers. Everything else (asking all at once, sorting the replies into answers,
refusals and departures) is built here on those two calls.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol


class WorkerGone(Exception):
    """The worker exited (or its channel closed) before it answered."""


class Workers(Protocol):
    def serving(self) -> list[int]:
        """The indexes of the workers that serve now (a worker being started is not one:
        it starts from the desired state once the change in progress is over)."""
        ...

    async def ask(self, index: int, op: str, timeout: float, **args: Any) -> Any:
        """Send one control command to worker ``index`` and return its reply. Raises
        ``WorkerGone`` if the worker is gone or goes before it answers, ``TimeoutError``
        after ``timeout`` seconds, and any other exception (``ControlError``) with the
        worker's own message when it refuses."""
        ...


@dataclass
class Replies:
    """Every serving worker's answer to one command."""

    op: str
    ok: dict[int, Any] = field(default_factory=dict)
    #: Refusals and timeouts: worker index -> the reason.
    refused: dict[int, str] = field(default_factory=dict)
    #: Workers that exited before they answered: worker index -> the reason.
    gone: dict[int, str] = field(default_factory=dict)

    @property
    def failures(self) -> dict[int, str]:
        return {**self.refused, **self.gone}

    def first_failure(self) -> str | None:
        """The reason of the lowest-numbered worker's failure, naming the worker when there
        are several (with one worker its own message is the whole story), and always when
        it went away or did not answer."""
        failures = self.failures
        if not failures:
            return None
        index = min(failures)
        reason = failures[index]
        if len(self.ok) + len(failures) > 1 and not reason.startswith(f"worker {index} "):
            return f"worker {index}: {reason}"
        return reason

    def first(self) -> Any:
        """The reply of the lowest-numbered worker that answered."""
        return self.ok[min(self.ok)] if self.ok else None


async def ask_all(workers: Workers, op: str, timeout: float, **args: Any) -> Replies:
    """``op`` to every serving worker at once; returns when every one has answered, refused,
    timed out or gone."""
    indexes = workers.serving()
    outcomes = await asyncio.gather(
        *(workers.ask(i, op, timeout, **args) for i in indexes), return_exceptions=True
    )
    replies = Replies(op)
    for index, outcome in zip(indexes, outcomes, strict=True):
        if isinstance(outcome, WorkerGone):
            replies.gone[index] = f"worker {index} exited during {op}"
        elif isinstance(outcome, TimeoutError):
            replies.refused[index] = f"worker {index} did not answer {op} within {timeout:g} s"
        elif isinstance(outcome, asyncio.CancelledError):
            raise outcome
        elif isinstance(outcome, BaseException):
            replies.refused[index] = str(outcome) or type(outcome).__name__
        else:
            replies.ok[index] = outcome
    return replies
