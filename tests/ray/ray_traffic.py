"""A client loop for the Ray tests: threads posting V2 JSON inference requests one after
another, noting for each when it was sent and answered, its status and the version that
answered. Not a test module."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Answer:
    sent: float
    received: float
    #: The HTTP status, or the exception's class name.
    outcome: str
    version: int | None

    @property
    def ok(self) -> bool:
        return self.outcome == "200"


@dataclass
class Loop:
    url: str
    body: dict
    model: str = "digits"
    threads: int = 4
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    #: Seconds each thread rests between requests: steady traffic, not closed loops that
    #: take the cores the deploy under test needs (CI has 2).
    pause_s: float = 0.01

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    response = client.post(f"/v2/models/{self.model}/infer", json=self.body)
                    outcome = str(response.status_code)
                    version = response.headers.get("x-model-version")
                except httpx.HTTPError as exc:
                    outcome, version = type(exc).__name__, None
                self.answers.append(
                    Answer(sent, time.monotonic(), outcome, int(version) if version else None)
                )
                self.stop.wait(self.pause_s)

    def failures(self) -> list[Answer]:
        return [a for a in self.answers if not a.ok]

    def count_since(self, moment: float) -> int:
        return sum(1 for a in self.answers if a.sent >= moment)


@contextmanager
def client_loop(url: str, body: dict, threads: int = 4) -> Iterator[Loop]:
    loop = Loop(url, body, threads=threads)
    workers = [threading.Thread(target=loop._run, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield loop
    finally:
        loop.stop.set()
        for worker in workers:
            worker.join(60)
