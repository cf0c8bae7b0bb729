"""Errors of ``torchferry.optimize``."""

from __future__ import annotations


class Skipped(Exception):
    """An optimization that does not apply to this model (``reason`` says why)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
