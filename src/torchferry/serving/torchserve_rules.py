"""TorchServe's rules that both of its APIs follow, the inference port's and the management
port's: how a version may be written (``2`` or ``2.0``), and which exception type names an
error in its ``{"code", "type", "message"}`` body. Imports only the errors, so the
supervisor's management API shares it."""

from __future__ import annotations

import re

from torchferry.errors import (
    Conflict,
    InferenceTimeout,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PermissionDenied,
    RemoteSourceFailed,
    SourceRefused,
    TooManyRequests,
    TorchferryError,
    Unauthenticated,
)

#: A version in a path, TorchServe's way too: ``2``, ``2.0``.
VERSION = re.compile(r"(\d+)(?:\.0+)*")


class VersionNotFound(ModelNotFound):
    """The model is known but not this version (TorchServe's ModelVersionNotFoundException)."""


def plain_version(text: str) -> str:
    """TorchServe's way of writing a version (``1.0``) as torchferry's (``1``); anything
    else as it came."""
    match = VERSION.fullmatch(text.strip())
    return match.group(1) if match else text


def error_type(error: TorchferryError) -> str:
    """The exception name TorchServe puts in an error body's ``type``."""
    if isinstance(error, VersionNotFound):
        return "ModelVersionNotFoundException"
    if isinstance(error, ModelNotFound):
        return "ModelNotFoundException"
    if isinstance(error, Conflict):
        return "ConflictStatusException"
    if isinstance(error, Unauthenticated):  # TorchServe's name for a bad or missing key
        return "InvalidKeyException"
    if isinstance(error, TooManyRequests):
        return "TooManyRequestsException"
    if isinstance(error, SourceRefused | PermissionDenied):
        return "ForbiddenException"
    if isinstance(error, Overloaded | ModelNotReady):
        return "ServiceUnavailableException"
    if isinstance(error, RemoteSourceFailed):
        return "DownloadArchiveException"
    if isinstance(error, InferenceTimeout):
        return "RequestTimeoutException"
    return "BadRequestException" if error.status_code < 500 else "InternalServerException"
