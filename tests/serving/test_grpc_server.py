"""The gRPC server's place in the process: batches shared with HTTP, start and graceful stop,
a taken port, the command line, and stubs that stay reproducible and importable."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio

from torchferry.cli import build_parser
from torchferry.cli.serve_cmd import settings_from_args
from torchferry.serving.dataplane import DataPlane
from torchferry.serving.protocols.grpc import V2Grpc
from torchferry.serving.protos import inference_pb2 as pb
from torchferry.serving.protos.inference_pb2_grpc import GRPCInferenceServiceStub
from torchferry.serving.repository import ModelRepository
from torchferry.serving.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "src" / "torchferry" / "serving" / "protos"
PER_PROTOCOL = 8


def grpc_input(x: np.ndarray) -> list:
    tensor = grpcaio.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def http_body(x: np.ndarray) -> dict:
    return {
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]
    }


def batch_counts(http: httpx.Client) -> dict[int, int]:
    stats = http.get("/v2/models/batchy/versions/1/stats").json()["model_stats"][0]
    return {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}


def test_http_and_grpc_requests_share_batches(live_server, http):
    """batchy waits up to 50 ms for up to 16 rows: 8 one-row requests from each protocol,
    sent together, must meet in batches of more than 8 rows."""
    rows = [np.full((1, 4), i, np.float32) for i in range(2 * PER_PROTOCOL)]
    before = batch_counts(http)

    async def fire() -> list:
        client = grpcaio.InferenceServerClient(live_server.grpc_target)
        async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as web:
            # connect both first, so that the requests leave together
            await asyncio.gather(client.is_server_live(), web.get("/v2/health/live"))
            calls = [
                client.infer("batchy", grpc_input(x))
                if i % 2
                else web.post("/v2/models/batchy/infer", json=http_body(x))
                for i, x in enumerate(rows)
            ]
            answers = await asyncio.gather(*calls)
        await client.close()
        return answers

    answers = asyncio.run(fire())
    for i, (x, answer) in enumerate(zip(rows, answers, strict=True)):
        if i % 2:
            y = answer.as_numpy("y")
        else:
            assert answer.status_code == 200, answer.text
            y = np.asarray(answer.json()["outputs"][0]["data"], np.float32).reshape(1, 4)
        np.testing.assert_allclose(y, x * 2 + 1)
    after = batch_counts(http)
    new = {size: n - before.get(size, 0) for size, n in after.items() if n > before.get(size, 0)}
    assert sum(new.values()) < 2 * PER_PROTOCOL, new
    assert max(new) > PER_PROTOCOL, f"no batch mixed HTTP and gRPC: {new}"


def test_stop_lets_in_flight_calls_finish(model_store, tmp_path, start_server):
    args = [
        "--store", str(model_store.root), "--model", "adder", "--threads", "1",
        "--batching", "adder:max_delay_ms=1000",
    ]  # fmt: skip
    x = np.ones((1, 4), np.float32)
    with start_server(args, tmp_path / "server.log") as server:

        async def scenario() -> np.ndarray:
            client = grpcaio.InferenceServerClient(server.grpc_target)
            await client.is_server_live()
            call = asyncio.ensure_future(client.infer("adder", grpc_input(x)))
            await asyncio.sleep(0.3)  # the request now waits in the batcher (up to 1 s)
            server.process.terminate()
            result = await call
            await client.close()
            return result.as_numpy("y")

        np.testing.assert_allclose(asyncio.run(scenario()), x * 3 + 1)
        # uvicorn re-raises the signal once it has shut down cleanly
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log.read_text()


def _taken_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_in_process_start_readiness_and_stop(model_store):
    with _taken_port() as probe:
        port = probe.getsockname()[1]
    settings = ServerSettings(store=model_store.root, threads=1, grpc_port=port)
    repository = ModelRepository(settings)
    repository.load_store(model_store, ["adder"])

    async def scenario() -> None:
        protocol = V2Grpc(DataPlane(repository, None), settings)
        await protocol.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = GRPCInferenceServiceStub(channel)
                assert not (await stub.ServerReady(pb.ServerReadyRequest())).ready
                assert not (await stub.ModelReady(pb.ModelReadyRequest(name="adder"))).ready
                await repository.start()
                assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
                tensor = pb.ModelInferRequest.InferInputTensor(
                    name="x", datatype="FP32", shape=[1, 4]
                )
                request = pb.ModelInferRequest(
                    model_name="adder", inputs=[tensor], raw_input_contents=[bytes(16)]
                )
                response = await stub.ModelInfer(request)
                assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [1.0] * 4
        finally:
            await protocol.stop()
            await repository.close()

    asyncio.run(scenario())


def test_a_taken_port_fails_with_a_clear_message(model_store):
    with _taken_port() as taken:
        port = taken.getsockname()[1]
        settings = ServerSettings(store=model_store.root, threads=1, grpc_port=port)
        with pytest.raises(
            OSError, match=rf"127\.0\.0\.1:{port}: is the port taken.*--grpc-port N.*--no-grpc"
        ):
            plane = DataPlane(ModelRepository(settings), None)
            asyncio.run(V2Grpc(plane, settings).start())


def test_command_line_flags():
    def settings(*args: str) -> ServerSettings:
        return settings_from_args(build_parser().parse_args(["serve", "--store", "s", *args]))

    assert settings().grpc_port == 7070
    assert settings("--grpc-port", "9001").grpc_port == 9001
    assert settings("--no-grpc").grpc_port is None
    with pytest.raises(SystemExit):
        settings("--no-grpc", "--grpc-port", "9001")


def test_committed_stubs_are_what_the_script_generates(tmp_path):
    from grpc_tools import grpc_version as grpc_tools

    script = ROOT / "scripts" / "generate_protos.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True)
    for name in ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py"):
        assert (tmp_path / name).read_text() == (PROTOS / name).read_text(), (
            f"{name} is not what `python scripts/generate_protos.py` writes with grpcio-tools "
            f"{grpc_tools.VERSION}: run it and commit the result"
        )


def test_stubs_import_beside_tritonclients():
    # both define 'inference.*' messages; ours live in a private descriptor pool
    code = "import tritonclient.grpc, torchferry.serving.protocols.grpc, tritonclient.grpc.aio"
    subprocess.run([sys.executable, "-c", code], check=True)
