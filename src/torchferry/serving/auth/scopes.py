"""What a token may do: ``infer`` (every model) or ``infer:MODEL[,MODEL]``, ``metadata``,
``manage``, ``metrics``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torchferry.store_layout import MODEL_NAME_RULE, is_model_name

INFER = "infer"
METADATA = "metadata"
MANAGE = "manage"
METRICS = "metrics"
PLAIN_SCOPES = (INFER, METADATA, MANAGE, METRICS)


class ScopeError(ValueError):
    """A scope that is not one of the known ones (refused when a token is created)."""


def parse_scope(text: str) -> str:
    """``text`` as a canonical scope (``infer:a,b`` with its models sorted, duplicates gone);
    :class:`ScopeError` when it is not a scope."""
    scope = text.strip()
    if scope in PLAIN_SCOPES:
        return scope
    kind, colon, models = scope.partition(":")
    if kind == INFER and colon:
        names = [name.strip() for name in models.split(",")]
        # the store's rule for a model name (which has no comma)
        if names and all(is_model_name(name) for name in names):
            return f"{INFER}:{','.join(sorted(set(names)))}"
        raise ScopeError(f"scope {text!r}: name models as infer:MODEL[,MODEL]; {MODEL_NAME_RULE}")
    raise ScopeError(
        f"unknown scope {text!r}: use infer, infer:MODEL[,MODEL], metadata, manage or metrics"
    )


@dataclass(frozen=True, slots=True)
class Scopes:
    """The parsed scopes of one token, in the form the checks read."""

    #: ``infer``: may run every model.
    infer_all: bool = False
    #: ``infer:a,b``: may run these models.
    infer_models: frozenset[str] = frozenset()
    metadata: bool = False
    manage: bool = False
    metrics: bool = False

    @classmethod
    def parse(cls, texts: Iterable[str]) -> Scopes:
        infer_all = metadata = manage = metrics = False
        models: set[str] = set()
        for text in texts:
            scope = parse_scope(text)
            if scope == INFER:
                infer_all = True
            elif scope == METADATA:
                metadata = True
            elif scope == MANAGE:
                manage = True
            elif scope == METRICS:
                metrics = True
            else:
                models.update(scope.partition(":")[2].split(","))
        return cls(infer_all, frozenset(models), metadata, manage, metrics)

    def texts(self) -> list[str]:
        """These scopes written as scopes (``infer:a,b``, ``metadata``...), canonical."""
        out = []
        if self.infer_all:
            out.append(INFER)
        elif self.infer_models:
            out.append(f"{INFER}:{','.join(sorted(self.infer_models))}")
        out += [name for name in (METADATA, MANAGE, METRICS) if getattr(self, name)]
        return out

    def may_infer(self, model: str) -> bool:
        return self.infer_all or model in self.infer_models

    def may_infer_any(self) -> bool:
        """Whether the token may run some model (a route that names none needs this)."""
        return self.infer_all or bool(self.infer_models)

    def may_see(self, model: str) -> bool:
        """Whether the token may read a model's metadata: with ``metadata``, or for a model it
        may run (a client may learn the inputs of a model it may call)."""
        return self.metadata or self.infer_all or model in self.infer_models


def canonical_scopes(texts: Iterable[str]) -> list[str]:
    """Scopes as the key file stores them: parsed, the ``infer:`` ones merged into one, and
    ``infer:`` dropped where plain ``infer`` already allows every model."""
    return Scopes.parse(texts).texts()
