"""The data plane: the one path every protocol's request takes to a model and back.

Each protocol asks the :class:`DataPlane` for the model version a request names
(``resolve``: the default version when none is named; ``names``/``versions``/``all`` for the
metadata routes), decodes its wire format into an :class:`InferRequest` (or, for the payload
routes, a :class:`~torchferry.handlers.HandlerRequest`), and hands it to ``infer``, which

1. validates the named inputs once against the signature (datatype, names, shapes, batch),
2. queues them on the version's batcher, within the request's deadline, and
3. returns an :class:`InferResponse` whose outputs carry their V2 datatype, so that each
   encoder only writes bytes.

Payload routes run the model's handler around the same steps (``predict``): ``preprocess``
on the preprocessing thread pool, ``postprocess`` there or on the batcher's worker thread,
never on the event loop. Every failure is a :class:`~torchferry.errors.TorchferryError`
whose class fixes the status on every protocol. Protocols reach models only through this
class: it is the one place where metrics, access logs, traces, auth scopes and traffic
routing hook in.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from torchferry.codecs.datatypes import output_datatype
from torchferry.errors import (
    InferenceTimeout,
    ModelError,
    ModelNotFound,
    PermissionDenied,
    TorchferryError,
    Unauthenticated,
)
from torchferry.handlers.base import Handler, HandlerRequest
from torchferry.serving.auth.keyring import KeyRing, Principal
from torchferry.serving.observe import Observers, RequestRecord, current_record
from torchferry.serving.repository import LoadedModel, ModelRepository, not_loaded
from torchferry.serving.shadow import Shadows
from torchferry.serving.versionstats import StatsObserver
from torchferry.signature import ModelSignature

_T = TypeVar("_T")


@dataclass(slots=True)
class RequestedOutput:
    """One output a request asks for, and whether it goes back as raw bytes."""

    name: str
    binary: bool = False


@dataclass(slots=True)
class InferRequest:
    """A tensor request, whatever protocol carried it."""

    model_name: str
    #: The version as the client wrote it; None (or "") for the model's default version.
    model_version: str | None
    #: Named input arrays, batch first (raw inputs may be read-only views of the body).
    inputs: dict[str, np.ndarray]
    #: Outputs to answer, in order; empty for every output of the signature.
    outputs: list[RequestedOutput] = field(default_factory=list)
    #: Whether outputs the request does not name go back binary.
    binary_outputs: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    #: ``time.monotonic()`` by which the answer must be ready; None for no client deadline.
    deadline: float | None = None
    #: V2's ``priority``: lower runs first; 0 is the default level (``DEFAULT_PRIORITY``).
    priority: int = 0
    #: Which protocol decoded it (``"v2"``, ``"v2-grpc"``, ``"v1"``...), for logs and metrics.
    protocol: str = ""
    #: The sticky routing key the client sent (``protocols.common.traffic_key``), if any.
    traffic_key: str | None = None


@dataclass(slots=True)
class OutputTensor:
    name: str
    #: The V2 datatype, checked once here so that no encoder has to.
    datatype: str
    array: np.ndarray
    binary: bool = False


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str | None
    outputs: list[OutputTensor]


class DataPlane:
    """Resolves, validates, batches and answers requests for every protocol."""

    def __init__(
        self,
        repository: ModelRepository,
        request_timeout_s: float | None,
        observers: Observers | None = None,
        keys: KeyRing | None = None,
    ) -> None:
        self.repository = repository
        #: With ``--auth``: the tokens. Each request's entry point puts its caller (or the
        #: reason it has none) on the request's record, and the accessors below check it;
        #: None (auth off) costs each accessor one ``is None`` test.
        self.keys = keys
        self.request_timeout_s = request_timeout_s
        #: Set when this process drains: health answers "not ready" while the requests it
        #: has accepted are still answered.
        self.draining = False
        #: Set by a worker until its supervisor says every worker serves: an orchestrator
        #: sends no traffic to a server that is only partly up.
        self.held = False
        #: Where every protocol's entry point starts and finishes its request records.
        self.observers = observers if observers is not None else Observers()
        # each version's live figures (the supervisor's rollouts read them)
        self.observers.observers.append(StatsObserver(repository.stats.get))
        #: With ``--memory-budget``: a request loads its version's engines if they are not
        #: resident, before it is queued; None (no budget) costs each request one test.
        self.residency = repository.residency
        self.shadows = Shadows(repository.settings.metrics, request_timeout_s, self.residency)

    @property
    def ready(self) -> bool:
        return self.repository.started and not self.draining and not self.held

    def resolve(
        self, name: str, version: str | int | None = None, key: str | None = None
    ) -> LoadedModel:
        """The model version a request names; when it names none, the one the model's routes
        pick (sticky on ``key`` when traffic is weighted), else the highest loaded."""
        if self.keys is not None:
            self._authorize_known(name)
        return self.repository.get(name, version, key)

    def require(self, name: str) -> None:
        """404 for a model that is not loaded (before a request's body is read)."""
        if self.keys is not None:
            self._authorize_known(name)
        self.repository.versions(name)

    def default_version(self, name: str) -> int:
        """The version answering ``name``'s unversioned requests when its traffic is not
        weighted: its routes' default, else its highest loaded version (404 if unknown)."""
        if self.keys is not None:
            self._authorize_known(name)
        return self.repository.default_version(name)

    def names(self) -> list[str]:
        """The models that can be named (by this caller: with ``--auth``, a token without
        the ``metadata`` scope sees only the models it may run)."""
        names = self.repository.names()
        if self.keys is not None:
            caller = self._caller()
            if caller is not None and not caller.scopes.metadata:
                return [name for name in names if caller.scopes.may_infer(name)]
        return names

    def authorize_infer(self, name: str | None) -> None:
        """With ``--auth``: refuse a caller who may not run ``name`` (None: who may run no
        model at all). Every inference route calls it first, before it reads or decodes its
        body, so that a token without the scope costs the server no more than this."""
        if self.keys is None:
            return
        if name is not None:
            self._authorize(name, infer=True)
            return
        caller = self._caller()
        if caller is not None and not caller.scopes.may_infer_any():
            raise PermissionDenied(
                f"token {caller.id} may not run models: that needs the scope infer or infer:MODEL"
            )

    def versions(self, name: str) -> list[LoadedModel]:
        """Every loaded version of a model, oldest first (404 for an unknown model)."""
        if self.keys is not None:  # before the lookup: its 404 would list the models
            self._authorize_known(name)
        repository = self.repository
        return [repository.get(name, version) for version in repository.versions(name)]

    def all(self) -> list[LoadedModel]:
        """Every loaded version of every model."""
        return [model for name in self.names() for model in self.versions(name)]

    async def infer(self, model: LoadedModel, request: InferRequest) -> InferResponse:
        """Validate the request's inputs, run them through the batcher, return the outputs."""
        if self.keys is not None:
            self._authorize(model.name, infer=True)
        if model.retired:
            model = self._reroute(model, request.model_version, request.traffic_key)
        record = _reached(model)
        if record is not None and request.id:
            record.adopt_id(request.id)
        model.inflight += 1
        try:
            wanted = wanted_outputs(model.signature, request)
            inputs = model.signature.validate_inputs(request.inputs)
            if self.residency is not None:
                await self.residency.ensure(model, request.deadline)
            results = await model.batcher.submit(
                inputs, self._timeout(request.deadline), request.priority
            )
            outputs = []
            for name, binary in wanted:
                array = results.get(name)
                if array is None:
                    raise ModelError(f"model {model.name!r} did not return output {name!r}")
                outputs.append(OutputTensor(name, output_datatype(name, array), array, binary))
            if record is not None:
                record.success = True
            if not request.model_version:
                shadow = self._shadow_for(model)
                if shadow is not None:
                    self.shadows.mirror(model, shadow, inputs, results)
            return InferResponse(model.name, str(model.version), request.id, outputs)
        finally:
            model.inflight -= 1
            if model.retired and not model.inflight:
                model.left()

    async def predict(
        self,
        model: LoadedModel,
        request: HandlerRequest,
        version: str | None = None,
        key: str | None = None,
    ) -> Any:
        """A payload request through the model's handler: preprocess, batch, postprocess.
        ``version`` is the version the client named (None: routed), ``key`` its traffic key.

        ``preprocess`` runs on the preprocessing pool; ``postprocess`` on the batcher's worker
        thread right after the model for a lone request, else on the pool (see the batcher)."""
        if self.keys is not None:
            self._authorize(model.name, infer=True)
        if model.retired:
            model = self._reroute(model, version, key)
        record = _reached(model)
        model.inflight += 1
        try:
            handler = model.handler
            loop = asyncio.get_running_loop()
            preprocess = _guarded(model, "preprocess", handler.preprocess)
            prepared = await loop.run_in_executor(model.preprocess_pool, preprocess, request)
            inputs, state = _unpack_preprocessed(model, prepared)
            inputs = model.signature.validate_inputs(inputs)
            shadow = None if version else self._shadow_for(model)
            kept: list[dict[str, np.ndarray]] = []
            finish = functools.partial(_postprocess, handler, state, kept if shadow else None)
            postprocess = _guarded(model, "postprocess", finish)
            if self.residency is not None:
                await self.residency.ensure(model, None)
            answer = await model.batcher.submit_then(
                inputs, self._timeout(None), model.preprocess_pool, postprocess
            )
            if record is not None:
                record.success = True
            if shadow is not None and kept:
                self.shadows.mirror(model, shadow, inputs, kept[0])
            return answer
        finally:
            model.inflight -= 1
            if model.retired and not model.inflight:
                model.left()

    # -- helpers -------------------------------------------------------------------------------

    def _caller(self) -> Principal | None:
        """The current request's caller; None (allowed) outside a request: every request's
        entry point (``RecordRequests``, the gRPC wrapper) starts its record first, and the
        server's own reads (the worker's status) go to the repository, not through here. A
        request without a caller is refused with its reason."""
        record = current_record()
        if record is None:
            return None
        grant = record.grant
        if isinstance(grant, Principal):
            return grant
        if grant is None:  # an entry point that did not authenticate: refuse, never allow
            raise Unauthenticated("this server needs a token: send 'Authorization: Bearer ...'")
        grant.__traceback__ = None  # raised once per accessor: keep no stale frames
        raise grant

    def _authorize(self, name: str, infer: bool) -> None:
        """Refuse a caller who may not run (``infer``) or read the metadata of ``name``: 401
        before 403 before any 404, so that a refusal never tells whether a model exists."""
        caller = self._caller()
        if caller is None:
            return
        scopes = caller.scopes
        if infer and not scopes.may_infer(name):
            raise PermissionDenied(
                f"token {caller.id} may not run model {name!r}: that needs the scope "
                f"infer or infer:{name}"
            )
        if not infer and not scopes.may_see(name):
            raise PermissionDenied(
                f"token {caller.id} may not use model {name!r}: that needs the scope "
                f"infer or infer:{name} (metadata to read it only)"
            )

    def _authorize_known(self, name: str) -> None:
        """With ``--auth``, before a lookup by name: the caller's refusal (401, 403), else a
        404 for a model that is not loaded whose list names only the models this caller may
        see (the repository's own 404 lists every model)."""
        self._authorize(name, infer=False)
        if not self.repository.loaded(name):
            raise not_loaded(name, self.names())

    def _reroute(self, model: LoadedModel, version: str | None, key: str | None) -> LoadedModel:
        """A request that resolved ``model`` just before it was retired: routed again, or a
        404 when the client named that version."""
        if version:
            raise ModelNotFound(f"model {model.name!r} version {model.version} was unloaded")
        return self.repository.get(model.name, None, key)

    def _shadow_for(self, model: LoadedModel) -> LoadedModel | None:
        """The version to mirror a routed request of ``model`` to, if this one is mirrored."""
        route = self.repository.route(model.name)
        if route is None or route.shadow is None or route.shadow == model.version:
            return None
        if not self.shadows.chosen(route.shadow_share):
            return None
        return self.repository.find(model.name, route.shadow)

    def _timeout(self, deadline: float | None) -> float | None:
        """Seconds the batcher may take: the server's limit or the client's deadline."""
        timeout = self.request_timeout_s
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise InferenceTimeout("the request's deadline passed before it was queued")
            timeout = left if timeout is None else min(timeout, left)
        return timeout


def _reached(model: LoadedModel) -> RequestRecord | None:
    """Mark the current request as an inference of ``model`` (what the per-model metrics
    count, success or failure, from here on)."""
    record = current_record()
    if record is not None:
        record.model = model.name
        record.version = str(model.version)
        record.decoded = time.perf_counter()
    return record


def _postprocess(
    handler: Handler,
    state: Any,
    keep: list[dict[str, np.ndarray]] | None,
    outputs: dict[str, np.ndarray],
) -> Any:
    if keep is not None:  # the model's own outputs, for a shadow comparison
        keep.append(outputs)
    return handler.postprocess(outputs, state)


def _guarded(model: LoadedModel, step: str, function: Callable[..., _T]) -> Callable[..., _T]:
    """``function`` (a handler step) with its own failures as 500s that name the handler and
    the step; the errors it raises on purpose (``InvalidInput``...) keep their class."""

    def run(*args: Any) -> _T:
        try:
            return function(*args)
        except TorchferryError:
            raise
        except Exception as exc:
            failed = f"the handler of model {model.name!r} failed in {step}: {type(exc).__name__}"
            # its message is the handler author's: the client sees it, a log line does not
            raise ModelError(f"{failed}: {exc}", log_message=failed) from exc

    return run


def wanted_outputs(signature: ModelSignature, request: InferRequest) -> list[tuple[str, bool]]:
    """The outputs to answer, each with whether it goes back binary: those the request
    names, in its order and once each, or every output of the signature."""
    if not request.outputs:
        return [(name, request.binary_outputs) for name in signature.output_names]
    wanted: dict[str, bool] = {}
    for output in request.outputs:
        signature.output(output.name)  # an unknown name is the client's fault: 400
        wanted.setdefault(output.name, output.binary)
    return list(wanted.items())


def _unpack_preprocessed(model: LoadedModel, prepared: Any) -> tuple[dict[str, np.ndarray], Any]:
    """``preprocess``'s ``(inputs, state)``, checked: a handler bug is a 500 that says so."""
    if not (isinstance(prepared, tuple) and len(prepared) == 2 and isinstance(prepared[0], dict)):
        raise ModelError(
            f"the handler of model {model.name!r}: preprocess must return (inputs, state) "
            f"with inputs a dict of arrays, returned {type(prepared).__name__}"
        )
    inputs, state = prepared
    specs = {spec.name: spec for spec in model.signature.inputs}
    for name, array in inputs.items():
        if not isinstance(array, np.ndarray):
            raise ModelError(
                f"the handler of model {model.name!r}: preprocess gave input {name!r} as "
                f"{type(array).__name__}; give numpy arrays"
            )
        spec = specs.get(name)
        if spec is not None and array.dtype != spec.numpy_dtype:  # the client cannot fix this
            raise ModelError(
                f"the handler of model {model.name!r}: preprocess gave input {name!r} as "
                f"{array.dtype}; the model takes {spec.datatype} ({spec.numpy_dtype})"
            )
    return inputs, state
