"""Schemathesis hooks for fuzzing torchferry's OpenAPI documents (loaded by the schemathesis
CLI through ``SCHEMATHESIS_HOOKS=fuzz_openapi_hooks``; configured by environment variables
so that one module serves the inference and the management runs).

- The check ``no_server_error_but_the_fault`` fails every 5xx except the injected model
  fault (``fuzz_support.is_injected_fault``), and writes one JSON line per response to
  ``FUZZ_RECORD``: the test counts the cases and lists the 5xx from that file, not from the
  CLI's wording.
- Model names, versions and management sources are drawn part of the time from the models
  the server really has (``FUZZ_MODELS``, ``FUZZ_SOURCES``), else left as generated, so the
  fuzz reaches past the 404 of an unknown model.
- With ``FUZZ_PROTECT=NAME`` (the management run), no request may name that model: a path
  parameter, query value or JSON body value that names it (as a name or as a path
  component of a source) is replaced by ``FUZZ_STANDIN`` just before the call. The good
  requests use that model, so their answers stay meaningful whatever the fuzzer does.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from typing import Any

import schemathesis
from fuzz_support import server_error
from hypothesis import strategies as st

_RECORD = os.environ.get("FUZZ_RECORD")
_MODELS = [m for m in os.environ.get("FUZZ_MODELS", "").split(",") if m]
_SOURCES = [s for s in os.environ.get("FUZZ_SOURCES", "").split(",") if s]
_PROTECT = os.environ.get("FUZZ_PROTECT")
_STANDIN = os.environ.get("FUZZ_STANDIN", "fz_adder")
_VERSIONS = ["1", "2", "3"]
_lock = threading.Lock()


def _record(entry: dict[str, Any]) -> None:
    if _RECORD:
        with _lock, open(_RECORD, "a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")


@schemathesis.check
def no_server_error_but_the_fault(ctx: Any, response: Any, case: Any) -> bool | None:
    target = f"{case.method} {response.request.url}"
    body = response.content.decode("utf-8", "replace")
    problem = server_error(response.status_code, target, body)
    _record({"target": target, "operation": f"{case.method} {case.path}",
             "status": response.status_code, "seconds": response.elapsed, "at": time.time(), "problem": problem})  # fmt: skip
    if problem is not None:
        raise AssertionError(problem)
    return None


def _sometimes(value: Any, choices: list[str]) -> st.SearchStrategy[Any]:
    """The generated value, or one of ``choices``."""
    if not choices:
        return st.just(value)
    return st.one_of(st.just(value), st.sampled_from(choices))


def _substituted(given: dict[str, Any], choices: dict[str, Any]) -> st.SearchStrategy[Any]:
    """``given`` with each field named in ``choices`` sometimes replaced by one of them."""
    fields = [name for name in choices if name in given]

    def chosen(values: tuple[Any, ...]) -> dict[str, Any]:
        return {**given, **dict(zip(fields, values, strict=True))}

    return st.tuples(*(_sometimes(given[name], choices[name]) for name in fields)).map(chosen)


@schemathesis.hook
def flatmap_path_parameters(context: Any, path: dict[str, Any]) -> st.SearchStrategy[Any]:
    if not path:
        return st.just(path)
    return _substituted(path, {"model_name": _MODELS, "model_version": _VERSIONS})


@schemathesis.hook
def flatmap_query(context: Any, query: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    if not query:
        return st.just(query)
    return _substituted(query, {"url": _SOURCES, "model_name": _MODELS})


def names_protected(value: Any) -> bool:
    """Whether a value names the protected model, alone or as a path component."""
    if _PROTECT is None:
        return False
    if isinstance(value, dict):
        return any(names_protected(k) or names_protected(v) for k, v in value.items())
    if isinstance(value, list):
        return any(names_protected(v) for v in value)
    return isinstance(value, str) and _PROTECT in re.split(r"[^A-Za-z0-9_.-]+", value)


def _shield(mapping: dict[str, Any] | None) -> None:
    for key, value in list((mapping or {}).items()):
        if names_protected(value):
            mapping[key] = _STANDIN  # type: ignore[index]


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if _PROTECT is None:
        return
    _shield(case.path_parameters)
    _shield(case.query)
    if isinstance(case.body, dict):
        _shield(case.body)
    elif names_protected(case.body):
        case.body = {}
