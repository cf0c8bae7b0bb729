"""A batcher started on the running event loop for one test body, closed after it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from torchferry.serving.batcher import Batcher


async def with_batcher(model: Any, body: Callable[[Batcher], Awaitable[Any]], **kwargs: Any) -> Any:
    batcher = Batcher(model, name="m:1", **kwargs)
    batcher.start()
    try:
        return await body(batcher)
    finally:
        await batcher.close()
