"""Errors a user can cause, each with the HTTP status it maps to (DESIGN.md, Errors).

Protocols turn these into their own error bodies; nothing else needs to know about HTTP.
"""

from __future__ import annotations


class TorchferryError(Exception):
    """Base of every error torchferry raises on purpose."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(TorchferryError):
    """Bad JSON, unknown or missing input, wrong dtype or shape."""

    status_code = 400


class ModelNotFound(TorchferryError):
    """Unknown model or version."""

    status_code = 404


class PayloadTooLarge(TorchferryError):
    status_code = 413


class UnsupportedMediaType(TorchferryError):
    status_code = 415


class ModelNotReady(TorchferryError):
    status_code = 503


class Overloaded(TorchferryError):
    """The model's queue is full; the client should retry after ``retry_after`` seconds."""

    status_code = 503

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InferenceTimeout(TorchferryError):
    status_code = 504


class ModelError(TorchferryError):
    """The model itself raised while computing; the message is the model's."""

    status_code = 500


class ArchiveError(TorchferryError):
    """A model archive is malformed, incomplete, or fails its integrity check."""

    status_code = 500


class ExportError(TorchferryError):
    """Export failed, or an exported form disagrees with eager PyTorch beyond the tolerance."""
