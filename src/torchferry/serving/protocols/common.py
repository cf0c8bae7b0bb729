"""What every protocol module shares: reaching the repository from a request."""

from __future__ import annotations

from fastapi import Request

from torchferry.serving.repository import ModelRepository


def repository_of(request: Request) -> ModelRepository:
    repository: ModelRepository = request.app.state.repository
    return repository
