"""Errors a user can cause, each with the status it maps to on every protocol.

Each class names its HTTP status and its gRPC status code; protocols read these two and
nothing else, so one fault gets one class of answer everywhere. Nothing here imports a
protocol library: gRPC codes are their names (``grpc.StatusCode[name]``).
"""

from __future__ import annotations

import os
from typing import ClassVar


class TorchferryError(Exception):
    """Base of every error torchferry raises on purpose."""

    status_code: ClassVar[int] = 500
    grpc_code: ClassVar[str] = "INTERNAL"

    def __init__(
        self, message: str, retry_after: float | None = None, *, log_message: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        #: Seconds after which a retry may succeed (503s); None when retrying will not help.
        self.retry_after = retry_after
        #: What a log line says of it: the message, less any text quoted from a model or a
        #: handler (which may quote the request's values; the client's answer keeps it).
        self.log_message = message if log_message is None else log_message


class InvalidInput(TorchferryError):
    """Bad JSON, unknown or missing input, wrong dtype or shape."""

    status_code = 400
    grpc_code = "INVALID_ARGUMENT"


class ModelNotFound(TorchferryError):
    """Unknown model or version."""

    status_code = 404
    grpc_code = "NOT_FOUND"


class PayloadTooLarge(TorchferryError):
    status_code = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class UnsupportedMediaType(TorchferryError):
    status_code = 415
    grpc_code = "INVALID_ARGUMENT"


class ModelNotReady(TorchferryError):
    """The model exists but cannot take requests now (starting, draining, stopped)."""

    status_code = 503
    grpc_code = "UNAVAILABLE"


class Overloaded(TorchferryError):
    """The model's queue is full; the client should retry after ``retry_after`` seconds."""

    status_code = 503
    grpc_code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after)


class InferenceTimeout(TorchferryError):
    status_code = 504
    grpc_code = "DEADLINE_EXCEEDED"


class ModelError(TorchferryError):
    """The model (or its handler) raised while computing; the message is the model's."""

    status_code = 500
    grpc_code = "INTERNAL"


class ArchiveError(TorchferryError):
    """A model archive is malformed, incomplete, or fails its integrity check."""

    status_code = 500
    grpc_code = "INTERNAL"


class UntrustedCode(ArchiveError):
    """An archive carries Python code (a handler, an eager model) that the operator has not
    allowed to run: ``torchferry serve --trust-code`` allows it."""


#: In every signature refusal's message (``serving.build.check_signature``): the one mark
#: the supervisor, which sees only a failed load's reason text, finds a refusal by.
SIGNATURE_REFUSED = "signature refused"


class SignatureRefused(ArchiveError):
    """Signed archives are required (``--require-signed``) or a signature is present, and
    this archive's is missing, does not match its files, or was made by a key that is not
    trusted (``--trusted-key``); the message says which."""


class DeviceUnavailable(TorchferryError):
    """The device a model was asked to run on (``--device``, a GPU candidate of autotune) is
    not a device name torchferry knows, or is not usable here: no CUDA device, or an engine
    without what that device needs (``onnxruntime-gpu``, the TensorRT libraries). The message
    says what is needed. A runtime raises it at load rather than fall back to the CPU."""


class ModelLoadFailed(TorchferryError):
    """A version could not be loaded (bad archive, runtime or handler failure, failed
    warm-up); the message says why, and whatever served before keeps serving."""

    status_code = 400
    grpc_code = "INVALID_ARGUMENT"


class SourceRefused(TorchferryError):
    """A management call named a model source outside the allowed roots, or a remote one
    that the server's policy refuses (scheme, ``--allowed-urls``, address, redirect)."""

    status_code = 403
    grpc_code = "PERMISSION_DENIED"


class RemoteSourceFailed(TorchferryError):
    """A remote model source could not be fetched: its host did not resolve or answer, its
    TLS certificate did not verify, or it answered with an error. The remote's fault, not
    the server's: 502, as a gateway answers."""

    status_code = 502
    grpc_code = "UNAVAILABLE"


class RemoteSourceTimeout(RemoteSourceFailed):
    """A remote model source took longer than the download deadline (``--download-timeout``)."""

    status_code = 504
    grpc_code = "DEADLINE_EXCEEDED"


class Conflict(TorchferryError):
    """A management call that the model's current state does not allow (a rollout already
    running, weights on a version that is not loaded...)."""

    status_code = 409
    grpc_code = "FAILED_PRECONDITION"


class Unauthenticated(TorchferryError):
    """No token, or one that is unknown, malformed, revoked or expired (``--auth``). HTTP
    answers carry ``WWW-Authenticate: Bearer``; the message never repeats the token."""

    status_code = 401
    grpc_code = "UNAUTHENTICATED"


class PermissionDenied(TorchferryError):
    """A valid token whose scopes do not allow the call."""

    status_code = 403
    grpc_code = "PERMISSION_DENIED"


class TooManyRequests(TorchferryError):
    """A token over its request rate; the client should retry after ``retry_after`` seconds."""

    status_code = 429
    grpc_code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after)


class ExportError(TorchferryError):
    """Export failed, or an exported form disagrees with its source model (eager PyTorch, or
    TensorFlow for an import) beyond the tolerance."""


def store_unreadable(exc: PermissionError) -> TorchferryError:
    """A store owned by another user (a volume mounted as it was made): one line, for the
    supervisor and for each Ray replica alike."""
    return TorchferryError(
        f"cannot read the model store: {exc.filename}: permission denied to user "
        f"{os.getuid()}; make the store readable (and writable, for its .torchferry/) by "
        "that user"
    )


def retry_after_header(error: TorchferryError) -> str | None:
    """The ``Retry-After`` value (whole seconds, at least 1) for an error that has one."""
    if error.retry_after is None:
        return None
    return str(max(1, round(error.retry_after)))


#: The challenge a 401 carries over HTTP (RFC 6750).
WWW_AUTHENTICATE = 'Bearer realm="torchferry"'


def error_headers(error: TorchferryError) -> dict[str, str] | None:
    """The HTTP headers an error's answer carries: ``Retry-After`` when retrying may help,
    ``WWW-Authenticate`` on a 401; None when it needs none."""
    headers: dict[str, str] = {}
    retry_after = retry_after_header(error)
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    return headers or None


def internal_error(exc: BaseException, *, quote: bool = True) -> ModelError:
    """An exception nobody expected, as the 500 / INTERNAL every protocol answers with.

    Without ``quote``, its type only: on the data plane, where the messages of Python and
    numpy may quote the request's data (``could not convert string to float: 'x'``)."""
    if not quote:
        return ModelError(f"internal error: {type(exc).__name__}")
    return ModelError(f"internal error: {type(exc).__name__}: {exc}")
