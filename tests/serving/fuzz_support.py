"""What the fuzz tests (and ``bench/fuzz.py``) share: the injected model fault, the rule for
what counts as a server error, a throwaway store with models the fuzzer may change, and the
good requests sent alongside the fuzzer, each checked against its known answer.

The injected fault is the test store's ``faulty`` model (TorchScript that raises "negative sum
not allowed" on a row with a negative sum): a model that raises is a 500 (gRPC ``INTERNAL``)
carrying the model's message, by design. Every other 5xx, and every gRPC code that means the
server failed (``INTERNAL``, ``UNKNOWN``, ``DATA_LOSS``, ``UNIMPLEMENTED`` on a real method,
``DEADLINE_EXCEEDED`` with no deadline asked), is a bug.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np

from torchferry.serving.protos import inference_pb2 as pb
from torchferry.serving.protos.inference_pb2_grpc import GRPCInferenceServiceStub

#: The model that raises on purpose, and the message it raises with.
FAULT_MODEL = "faulty"
FAULT_MESSAGE = "negative sum not allowed"
#: The model the good requests use: the fuzzer is never let near it on the management API.
GOOD_MODEL = "adder"
#: Models the management fuzzer may load, unload, re-route and delete (copies of adder).
FUZZ_OWNED = ("fz_adder", "fz_spare")
#: Models the inference fuzzer aims at (as well as at names it makes up).
SERVED = ("adder", "mlp", "strings", "alltypes", "multi", "faulty", "tiny_image")

#: gRPC codes that mean the server failed rather than refused the request.
GRPC_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
    }
)


def is_injected_fault(status: int, target: str, body: str) -> bool:
    """A 500 from the faulty model with its own message: the one 5xx the fuzz allows."""
    return status == 500 and FAULT_MODEL in target and FAULT_MESSAGE in body


def server_error(status: int, target: str, body: str) -> str | None:
    """A description of a 5xx that is not the injected fault, else None."""
    if status < 500 or is_injected_fault(status, target, body):
        return None
    return f"{status} from {target}: {body[:300]}"


def grpc_server_error(error: grpc.RpcError, model_name: str) -> str | None:
    """A description of a gRPC failure that means a server error, else None."""
    code, details = error.code(), error.details() or ""
    if code not in GRPC_SERVER_ERRORS:
        return None
    if code == grpc.StatusCode.INTERNAL and model_name == FAULT_MODEL and FAULT_MESSAGE in details:
        return None
    return f"{code.name} for model {model_name!r}: {details[:300]}"


def fuzz_store(source: Path, target: Path) -> Path:
    """A throwaway copy of the test store at ``target``, plus the fuzzer's own models (copies
    of adder's versions under other names): management fuzzing may change it at will."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))
    for name in FUZZ_OWNED:
        for version in ("1", "2"):
            shutil.copytree(source / GOOD_MODEL / version, target / name / version)
    return target


def adder_answer(x: np.ndarray, version: int) -> tuple[np.ndarray, np.ndarray]:
    """adder's outputs for x: y = x * (version + 1) + 1, total = row sums."""
    scale = np.float32(version + 1)
    return x * scale + np.float32(1.0), x.sum(axis=1, dtype=np.float32)


@dataclass
class GoodTraffic:
    """Good requests to ``adder`` version 1 (V2 JSON over HTTP, and V2 over gRPC when a
    target is given) sent in a thread while a fuzzer runs, every answer checked; every
    tenth request is the injected fault, which must answer 500 / INTERNAL with its message
    while the server goes on serving."""

    url: str
    grpc_target: str | None = None
    sent: int = 0
    faults: int = 0
    wrong: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> GoodTraffic:
        self._thread = threading.Thread(target=self._run, name="good-traffic", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def failures(self) -> str:
        """Empty when every good answer was right (and at least one was sent)."""
        if self.sent == 0:
            return "no good request was sent"
        return "\n".join(self.wrong[:20])

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        channel = grpc.insecure_channel(self.grpc_target) if self.grpc_target else None
        stub = GRPCInferenceServiceStub(channel) if channel else None
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                rows = int(rng.integers(1, 4))
                x = rng.uniform(-10, 10, (rows, 4)).astype(np.float32)
                try:
                    if self.sent % 10 == 9:
                        self._fault(client)
                    elif stub is not None and self.sent % 2:
                        self._grpc(stub, x)
                    else:
                        self._http(client, x)
                except Exception as error:  # a dropped connection is a wrong answer too
                    self.wrong.append(f"request {self.sent}: {type(error).__name__}: {error}")
                self.sent += 1
                time.sleep(0.05)  # steady, without taking the CPU the fuzzer needs
        if channel is not None:
            channel.close()

    def _http(self, client: httpx.Client, x: np.ndarray) -> None:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                            "data": x.ravel().tolist()}]}  # fmt: skip
        answer = client.post(f"/v2/models/{GOOD_MODEL}/versions/1/infer", json=body)
        if answer.status_code != 200:
            self.wrong.append(f"HTTP {answer.status_code}: {answer.text[:200]}")
            return
        outputs = {o["name"]: np.array(o["data"], np.float32) for o in answer.json()["outputs"]}
        self._compare("HTTP", x, outputs["y"].reshape(x.shape), outputs["total"])

    def _grpc(self, stub: GRPCInferenceServiceStub, x: np.ndarray) -> None:
        tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=x.shape)
        request = pb.ModelInferRequest(
            model_name=GOOD_MODEL, model_version="1", inputs=[tensor],
            raw_input_contents=[x.tobytes()],
        )  # fmt: skip
        reply = stub.ModelInfer(request, timeout=30)
        names = [o.name for o in reply.outputs]
        raw = dict(zip(names, reply.raw_output_contents, strict=True))
        y = np.frombuffer(raw["y"], np.float32).reshape(x.shape)
        self._compare("gRPC", x, y, np.frombuffer(raw["total"], np.float32))

    def _fault(self, client: httpx.Client) -> None:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [-1, -2]}]}
        answer = client.post(f"/v2/models/{FAULT_MODEL}/infer", json=body)
        if answer.status_code != 500 or FAULT_MESSAGE not in answer.text:
            self.wrong.append(f"injected fault: {answer.status_code} {answer.text[:200]}")
        self.faults += 1

    def _compare(self, via: str, x: np.ndarray, y: np.ndarray, total: np.ndarray) -> None:
        want_y, want_total = adder_answer(x, 1)
        # the server sums in its own order: float32 rounding, not a wrong answer
        close = np.allclose(y, want_y, rtol=1e-6, atol=1e-5)
        if not (close and np.allclose(total, want_total, rtol=1e-5, atol=1e-4)):
            self.wrong.append(f"{via}: wrong answer for {x.tolist()}: {y.tolist()}")
