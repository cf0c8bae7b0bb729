"""Keep exporters' console chatter (progress lines, warnings, log records) out of the user's way."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Capture stdout, stderr, warnings and log records below ERROR while the block runs.

    Yields the buffer holding what was printed, so that a caller can show it when something
    fails. ``logging.disable`` is process-wide; the previous level is restored on exit.
    """
    buffer = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with (
            contextlib.redirect_stdout(buffer),
            contextlib.redirect_stderr(buffer),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        logging.disable(previous)
