"""Hypothesis against the V2 decoders of the live server: malformed gRPC ``ModelInferRequest``s
over a real channel and malformed V2 binary-extension bodies over httpx (strategies in
``fuzz_strategies``), while good requests run alongside (``fuzz_support.GoodTraffic``).

Invariants: no server error but the injected model fault (a 500 / ``INTERNAL`` from the
``faulty`` model with its message) or a deadline the request itself asked for, the server
stays up, and every good request gets the right answer. The runs are derandomized and
bounded (``EXAMPLES`` each); ``bench/fuzz.py`` runs 10,000 of each by hand.
"""

from __future__ import annotations

import grpc
import httpx
import orjson
import pytest
from fuzz_strategies import BinaryCase, binary_cases, grpc_problem, grpc_requests
from fuzz_support import GoodTraffic
from hypothesis import HealthCheck, given, settings

from torchferry.serving.protos import inference_pb2 as pb
from torchferry.serving.protos.inference_pb2_grpc import GRPCInferenceServiceStub

EXAMPLES = 300
FUZZ = settings(
    max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip


@pytest.fixture(scope="module")
def workers(live_server):
    """The worker PIDs at the start: a worker that crashed comes back with a new one."""
    return live_server.worker_pids()


@pytest.fixture(scope="module")
def traffic(live_server, workers):
    with GoodTraffic(live_server.url, live_server.grpc_target) as good:
        yield good


@pytest.fixture(scope="module")
def stub(live_server):
    with grpc.insecure_channel(live_server.grpc_target) as channel:
        yield GRPCInferenceServiceStub(channel)


def check_alive(server, traffic, workers) -> None:
    assert server.alive(), server.output()[-4000:]
    assert server.worker_pids() == workers, server.output()[-4000:]
    assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200
    assert not traffic.wrong, traffic.failures()


def test_malformed_grpc_requests(live_server, traffic, workers, stub):
    problems: list[str] = []

    @FUZZ
    @given(request=grpc_requests())
    def send(request: pb.ModelInferRequest) -> None:
        try:
            reply = stub.ModelInfer(request, timeout=30)
        except grpc.RpcError as error:
            problem = grpc_problem(request, error)
            if problem:
                problems.append(f"{problem}\n  request: {str(request)[:400]}")
            assert problem is None, problem
            return
        assert len(reply.raw_output_contents) == len(reply.outputs), reply

    send()
    check_alive(live_server, traffic, workers)


def test_malformed_binary_bodies(live_server, traffic, workers, http):
    @FUZZ
    @given(case=binary_cases())
    def send(case: BinaryCase) -> None:
        answer = http.post(case.path, content=case.body, headers=case.headers)
        problem = case.problem(answer.status_code, answer.text)
        assert problem is None, f"{problem}\n  headers: {case.headers}\n  body: {case.body[:300]!r}"
        if answer.status_code == 200 and "inference-header-content-length" not in answer.headers:
            answer.json()  # a JSON answer is JSON

    send()
    check_alive(live_server, traffic, workers)


# -- what the fuzz found, kept as plain regression tests --------------------------------------

ABSURD = [0, 2**62]  # no elements, so no bytes to send; numpy cannot describe it


@pytest.mark.parametrize("typed", [False, True])
def test_grpc_empty_tensor_of_absurd_shape_is_refused(stub, typed):
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=ABSURD)
    request = pb.ModelInferRequest(model_name="adder", inputs=[tensor])
    if not typed:
        request.raw_input_contents.append(b"")
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is too large" in info.value.details()


def test_http_empty_tensor_of_absurd_shape_is_refused(http):
    tensor = {"name": "x", "datatype": "FP32", "shape": ABSURD}
    answer = http.post("/v2/models/adder/infer", json={"inputs": [{**tensor, "data": []}]})
    assert answer.status_code == 400 and "is too large" in answer.text, answer.text
    header = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 0}}]})
    answer = http.post("/v2/models/adder/infer", content=header,
                       headers={"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert answer.status_code == 400 and "is too large" in answer.text, answer.text


def test_good_requests_went_on_throughout(live_server, traffic, workers):
    traffic.stop()
    check_alive(live_server, traffic, workers)
    assert traffic.sent > 20 and traffic.faults > 0, (traffic.sent, traffic.faults)
