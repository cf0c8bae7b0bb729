"""The console's reading of the workers' metric files: one reading in a thread shared by
every page that asks within a second, concurrent callers included."""

from __future__ import annotations

import asyncio

from torchferry.serving.console.api import MetricsReading


def test_one_reading_serves_every_caller_within_its_age(tmp_path):
    reading = MetricsReading()

    async def go() -> list[tuple[float, list[object]]]:
        together = await asyncio.gather(*(reading.read(tmp_path) for _ in range(3)))
        return [*together, await reading.read(tmp_path)]

    answers = asyncio.run(go())
    assert len({at for at, _ in answers}) == 1
    assert all(metrics is answers[0][1] for _, metrics in answers)
    # a later event loop (a new app in tests) reuses the reading while it is fresh
    assert asyncio.run(reading.read(tmp_path))[0] == answers[0][0]
