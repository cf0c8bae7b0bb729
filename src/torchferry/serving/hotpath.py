"""The lean path: the inference routes called straight from the path, the framework around
them skipped.

On a small model, FastAPI's dispatch (its middleware stack, a linear walk over every route,
dependency solving per request) costs more CPU than decoding, batching and running the
model together. :class:`HotPath` sits in front of the FastAPI app as a plain ASGI app:

- it applies the body limit to every HTTP request, once (``limits.py``);
- for a route marked :func:`hot` it matches method and path with one precompiled regex per
  method, sets the scope as FastAPI's router does (``route``: the ``APIRoute`` itself, whose
  ``path`` is the template; ``endpoint``, ``path_params``, ``app``, ``router``), calls the
  endpoint with a :class:`LeanRequest` and its path parameters, and sends its response;
- everything else (metadata, health, docs, unknown routes, 404 and 405) goes to FastAPI,
  where the hot routes stay registered, so ``/docs`` and ``/openapi.json`` describe them.

Every route of the app is an alternative of the method's regex, in FastAPI's order, so a
path goes to the route FastAPI would choose; a match on a route that is not hot falls
through. An error raised by a hot endpoint is answered as FastAPI would: by the route's own
``answer_error`` when its route class has one (TorchServe's error shape), else by the app's
exception handler for the error's class.

A hot endpoint takes the ``Request`` and ``str`` path parameters, and nothing FastAPI would
have to solve (dependencies, query, header or body parameters); :class:`HotPath` checks this
when it is built.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast, runtime_checkable

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette._utils import is_async_callable
from starlette.concurrency import run_in_threadpool
from starlette.convertors import StringConvertor
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from torchferry.serving.limits import BodyLimit

_HOT = "__torchferry_hot__"
_E = TypeVar("_E", bound=Callable[..., Awaitable[Response]])
Endpoint = Callable[..., Awaitable[Response]]


def hot(endpoint: _E) -> _E:
    """Mark an endpoint for the lean path (apply it below the route decorator)."""
    setattr(endpoint, _HOT, True)
    return endpoint


@runtime_checkable
class AnswersErrors(Protocol):
    """A route class that answers its endpoint's errors itself (in its protocol's shape)."""

    def answer_error(self, request: Request, exc: Exception) -> Response: ...


class LeanRequest(Request):
    """A Starlette request whose ``body()`` is the received bytes themselves when they come
    in one message (Starlette's joins them with an empty chunk: a copy of every body)."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            if self._stream_consumed:
                raise RuntimeError("Stream consumed")
            chunks: list[bytes] = []
            while not self._stream_consumed:
                message = await self._receive()
                if message["type"] == "http.request":
                    chunks.append(message.get("body", b""))
                    self._stream_consumed = not message.get("more_body", False)
                elif message["type"] == "http.disconnect":
                    self._is_disconnected = True
                    raise ClientDisconnect()
            self._body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self._body


@dataclass(frozen=True, slots=True)
class _Hot:
    route: APIRoute
    endpoint: Endpoint
    #: (parameter name, regex group name) for each path parameter.
    params: tuple[tuple[str, str], ...]


class HotPath:
    """The app uvicorn runs: hot routes called directly, the rest handed to ``app``."""

    def __init__(self, app: FastAPI, routes: Sequence[BaseRoute], limit: BodyLimit) -> None:
        """``routes``: every route of ``app``, in the order its router tries them."""
        self.app = app
        self.routes = list(routes)
        self.limit = limit
        self._matchers: dict[str, re.Pattern[str]] = {}
        self._hot: dict[str, _Hot | None] = {}
        alternatives: dict[str, list[tuple[str, str]]] = {}
        methods = {m for r in routes if isinstance(r, Route) for m in r.methods or ()}
        for index, route in enumerate(routes):
            group = f"r{index}"
            pattern, hot_route = _alternative(route, group)
            self._hot[group] = hot_route
            # a mount, or a route without methods (an ASGI endpoint), takes every method
            accepts = route.methods if isinstance(route, Route) and route.methods else methods
            for method in accepts:
                alternatives.setdefault(method, []).append((group, pattern))
        for method, named in alternatives.items():
            if any(self._hot[group] for group, _ in named):
                self._matchers[method] = re.compile("|".join(p for _, p in named))

    @property
    def state(self) -> State:
        """The FastAPI app's state (the repository, the data plane, the settings)."""
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        checked = self.limit.receive_for(scope, receive)
        if checked is None:
            await self.limit.refuse(scope, send)
            return
        matcher = self._matchers.get(scope["method"])
        # under a root path, FastAPI strips it before matching: leave that to FastAPI
        match = matcher.fullmatch(scope["path"]) if matcher and not scope.get("root_path") else None
        target = self._hot[match.lastgroup] if match and match.lastgroup else None
        if target is None:
            await self.app(scope, checked, send)
            return
        params = {name: match[group] for name, group in target.params}  # type: ignore[index]
        scope["app"] = self.app
        scope["router"] = self.app.router
        scope["route"] = target.route
        scope["endpoint"] = target.endpoint
        scope["path_params"] = params
        request = LeanRequest(scope, checked, send)
        try:
            response = await target.endpoint(request, **params)
        except Exception as exc:
            response = await self._answer_error(target.route, request, exc)
        await response(scope, checked, send)

    async def _answer_error(self, route: APIRoute, request: Request, exc: Exception) -> Response:
        """What FastAPI answers: the route's own error shape, else the app's handler."""
        if isinstance(route, AnswersErrors):
            return route.answer_error(request, exc)
        handlers = self.app.exception_handlers
        handler = handlers.get(exc.status_code) if isinstance(exc, HTTPException) else None
        if handler is None:
            handler = next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)
        if handler is None:
            raise exc
        if is_async_callable(handler):
            response = await handler(request, exc)
        else:
            response = await run_in_threadpool(handler, request, exc)
        return cast(Response, response)


def _alternative(route: BaseRoute, group: str) -> tuple[str, _Hot | None]:
    """The route's path regex as a named alternative (its groups renamed to be unique), and
    what a hot route needs to be called."""
    path_regex = getattr(route, "path_regex", None)
    if path_regex is None:  # a route without a path pattern: it may take any path
        return f"(?P<{group}>.*)", None
    body = path_regex.pattern.removeprefix("^").removesuffix("$")
    body = re.sub(r"\(\?P<(\w+)>", lambda m: f"(?P<{group}_{m[1]}>", body)
    pattern = f"(?P<{group}>{body})"
    if not (isinstance(route, APIRoute) and getattr(route.endpoint, _HOT, False)):
        return pattern, None
    _check_hot(route)
    names = tuple(route.param_convertors)
    return pattern, _Hot(route, route.endpoint, tuple((n, f"{group}_{n}") for n in names))


def _check_hot(route: APIRoute) -> None:
    """A hot endpoint must need nothing FastAPI would solve or validate per request."""
    dependant = route.dependant
    problems = [
        what
        for what, present in (
            ("it has dependencies", dependant.dependencies or route.dependencies),
            ("it takes query parameters", dependant.query_params),
            ("it takes header parameters", dependant.header_params),
            ("it takes cookie parameters", dependant.cookie_params),
            ("it takes a body parameter", dependant.body_params),
            ("its Request is not 'request'", dependant.request_param_name != "request"),
            ("its path parameters are not all str", _non_str_path(route)),
            ("it is not a coroutine function", not is_async_callable(route.endpoint)),
            ("it has a response model", route.response_model is not None),
        )
        if present
    ]
    if problems:
        raise TypeError(
            f"hot endpoint {route.name} ({route.path}) cannot take the lean path: "
            f"{', '.join(problems)}"
        )


def _non_str_path(route: APIRoute) -> bool:
    declared = {p.name for p in route.dependant.path_params}
    convertors = route.param_convertors
    return (
        declared != set(convertors)
        or any(not isinstance(c, StringConvertor) for c in convertors.values())
        or any(p.field_info.annotation is not str for p in route.dependant.path_params)
    )
