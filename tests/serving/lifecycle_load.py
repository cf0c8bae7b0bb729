"""Clients of every protocol that send requests in a loop and note, for each answer, when it
was sent and received, whether it succeeded, and which version served it: the load that
the lifecycle tests change models under.

Not a test module: ``test_lifecycle_*.py`` import it (pytest puts this folder on the path).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from torchferry.serving.process import ServerProcess

ROW = [1.0, 2.0, 3.0, 4.0]


@dataclass(frozen=True)
class Answer:
    protocol: str
    sent: float
    received: float
    #: The HTTP status or gRPC outcome ("200", "OK"), or the exception's class name.
    outcome: str
    #: The version that served it, as the answer says (None when it failed).
    version: int | None
    #: Which version the request asked for ("" for the default).
    asked: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in ("200", "OK")


Sender = Callable[[list[float], str], tuple[str, int | None]]


def _http_sender(
    server: ServerProcess, protocol: str, model: str
) -> tuple[Sender, Callable[[], None]]:
    client = httpx.Client(base_url=server.url, timeout=30)

    def version_header(response: httpx.Response) -> int | None:
        value = response.headers.get("x-model-version")
        return int(value) if value else None

    def send(row: list[float], key: str) -> tuple[str, int | None]:
        headers = {"X-Traffic-Key": key} if key else {}
        if protocol == "v2":
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": row}]}
            answer = client.post(f"/v2/models/{model}/infer", json=body, headers=headers)
            if answer.status_code == 200:
                assert version_header(answer) == int(answer.json()["model_version"])
        elif protocol == "v1":
            answer = client.post(f"/v1/models/{model}:predict", json={"instances": [row]})
        elif protocol == "predict":
            answer = client.post(f"/predict/{model}", json={"data": [row]}, headers=headers)
            if answer.status_code == 200:
                assert version_header(answer) == int(answer.json()["model_version"])
        else:
            answer = client.post(f"/predictions/{model}", json={"data": [row]}, headers=headers)
        return str(answer.status_code), version_header(answer)

    return send, client.close


@dataclass
class Traffic:
    """One thread per protocol, each sending requests one after another to ``model``."""

    server: ServerProcess
    model: str
    protocols: tuple[str, ...] = ("v2", "v2-binary", "v2-grpc", "v1", "predict", "torchserve")
    #: Makes the rows a thread sends (the default is the same row every time).
    row: Callable[[int], list[float]] = field(default=lambda _: ROW)
    #: Sticky keys per request index; none by default.
    key: Callable[[int], str] = field(default=lambda _: "")
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    #: Seconds each thread rests between two requests: steady traffic that every change
    #: meets, without a closed loop's full cores (the suite shares 2 cores in CI).
    pause_s: float = 0.01
    errors: list[BaseException] = field(default_factory=list)

    def _sender(self, protocol: str) -> tuple[Sender, Callable[[], None]]:
        model = self.model
        if protocol == "v2-binary":
            client = httpclient.InferenceServerClient(self.server.url.removeprefix("http://"))

            def send_binary(row: list[float], key: str) -> tuple[str, int | None]:
                tensor = httpclient.InferInput("x", [1, 4], "FP32")
                tensor.set_data_from_numpy(np.array([row], np.float32), binary_data=True)
                headers = {"X-Traffic-Key": key} if key else None
                try:
                    result = client.infer(model, [tensor], headers=headers)
                except Exception as exc:  # tritonclient's InferenceServerException
                    return type(exc).__name__ + f": {exc}", None
                return "200", int(result.get_response()["model_version"])

            return send_binary, client.close
        if protocol == "v2-grpc":
            grpc = grpcclient.InferenceServerClient(self.server.grpc_target)

            def send_grpc(row: list[float], key: str) -> tuple[str, int | None]:
                tensor = grpcclient.InferInput("x", [1, 4], "FP32")
                tensor.set_data_from_numpy(np.array([row], np.float32))
                headers = {"x-traffic-key": key} if key else None
                try:
                    result = grpc.infer(model, [tensor], headers=headers)
                except Exception as exc:
                    return type(exc).__name__ + f": {exc}", None
                return "OK", int(result.get_response().model_version)

            return send_grpc, grpc.close
        return _http_sender(self.server, protocol, model)

    def _run(self, protocol: str) -> None:
        try:
            send, close = self._sender(protocol)
        except BaseException as exc:  # pragma: no cover - a broken client is the test's bug
            self.errors.append(exc)
            return
        try:
            index = 0
            while not self.stop.is_set():
                row, key = self.row(index), self.key(index)
                sent = time.monotonic()
                try:
                    outcome, version = send(row, key)
                except httpx.TransportError as exc:
                    outcome, version = type(exc).__name__, None
                received = time.monotonic()
                self.answers.append(Answer(protocol, sent, received, outcome, version))
                index += 1
                self.stop.wait(self.pause_s)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            close()

    @contextmanager
    def running(self) -> Iterator[Traffic]:
        threads = [threading.Thread(target=self._run, args=(p,)) for p in self.protocols]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert not self.errors, self.errors

    def failures(self) -> list[Answer]:
        return [a for a in self.answers if not a.ok]

    def count(self, protocol: str | None = None) -> int:
        return sum(1 for a in self.answers if protocol is None or a.protocol == protocol)
