"""Limits against abuse on a live server with short limits: slow and silent clients are cut
off (slowloris), oversized headers get 431, connections past the limit get 503, idle
keep-alive connections close, and gRPC refuses oversized messages and metadata; normal
requests keep being served throughout."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from torchferry.serving.process import ServerProcess, serve_in_subprocess

HEADER_TIMEOUT = 1.0
#: Longer than the header timeout: a body's clock must not stretch the next headers'.
BODY_TIMEOUT = 2.5
MAX_HEADER = 4096
MAX_CONNECTIONS = 4


@pytest.fixture(scope="module")
def server(model_store, tmp_path_factory) -> Iterator[ServerProcess]:
    args = [
        "--store", str(model_store.root), "--model", "adder", "--threads", "1",
        "--log-level", "warning", "--header-timeout", str(HEADER_TIMEOUT),
        "--body-timeout", str(BODY_TIMEOUT), "--keep-alive-timeout", "1",
        "--max-connections", str(MAX_CONNECTIONS), "--max-header-size", "4KiB",
        "--max-body-size", "64KiB", "--no-metrics", "--no-management",
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("limits") / "server.log"
    with serve_in_subprocess(args, log) as server:
        yield server


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the one answer on ``sock``; (0, {}, b"") when the
    server closed the connection without one."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, {}, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_trickled_headers_are_cut_off_while_others_are_served(server):
    started = time.monotonic()
    with connect(server) as slow, server.client() as client:
        slow.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        slow.settimeout(0.25)
        answer = None
        while answer is None and time.monotonic() - started < 5:
            slow.sendall(b"X-Slow: 1\r\n")  # a header every 0.25 s: never complete
            assert client.get("/v2/health/live").status_code == 200
            try:
                answer = read_answer(slow)
            except TimeoutError:
                continue
        assert answer is not None
        status, headers, body = answer
        assert status == 408 and headers["connection"] == "close", body
        assert HEADER_TIMEOUT <= time.monotonic() - started < HEADER_TIMEOUT + 2
        assert b"did not arrive in time" in body
        slow.settimeout(5)
        assert closed(slow)


def test_a_silent_connection_and_a_stalled_body_are_closed(server):
    with connect(server) as silent, connect(server) as stalled:
        stalled.sendall(
            b"POST /v2/models/adder/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            b'Content-Type: application/json\r\n\r\n{"inputs"'
        )
        assert read_answer(silent)[0] == 408
        status, _, body = read_answer(stalled)
        assert status == 408 and b"body" in body
        assert closed(silent) and closed(stalled)


def test_late_headers_after_a_slow_body_get_408_on_time(server):
    """On a kept-alive connection whose last request's body came slowly, the next request's
    headers still have the header timeout, not what was left of the body's, and are
    answered 408 (the previous request's finished answer must not make it a silent close)."""
    body = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}'
    with connect(server) as sock:
        sock.sendall(
            b"POST /v2/models/adder/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10]
        )
        time.sleep(0.8)
        sock.sendall(body[10:20])  # progress: the body's clock starts again
        time.sleep(0.4)  # past the connection's first deadline, which re-arms for the body
        sock.sendall(body[20:])
        assert read_answer(sock)[0] == 200
        sock.sendall(b"GET /v2/health/live HT")
        started = time.monotonic()
        status, _, answer = read_answer(sock)
        assert status == 408 and b"headers" in answer
        assert time.monotonic() - started < HEADER_TIMEOUT + 0.8
        assert closed(sock)


def test_oversized_headers_get_431(server):
    with server.client() as client:
        answer = client.get("/v2/health/live", headers={"x-big": "a" * (MAX_HEADER + 10)})
        assert answer.status_code == 431
        assert "--max-header-size" in answer.json()["error"]
        assert client.get("/v2/health/live", headers={"x-fine": "a" * 1000}).status_code == 200
    with connect(server) as endless:  # one header that never ends: refused, not buffered
        endless.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        try:
            for _ in range(64):
                endless.sendall(b"a" * 1024)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert read_answer(endless)[0] in (431, 0)  # a reset may overtake the answer
    assert server.alive()


def test_connections_past_the_limit_get_503_and_the_open_ones_are_served(server):
    held = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)  # accepted by the server
        with server.client() as client:
            refused = client.get("/v2/health/live")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "connections" in refused.json()["error"]
        held[0].sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(held[0])[0] == 200
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    with server.client() as client:
        assert client.get("/v2/health/live").status_code == 200


def test_an_idle_keep_alive_connection_closes(server):
    with connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock)[0] == 200
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")  # reused at once
        assert read_answer(sock)[0] == 200
        started = time.monotonic()
        assert closed(sock)
        assert 0.8 < time.monotonic() - started < 3


def grpc_tensor(rows: int) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("x", [rows, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((rows, 4), dtype=np.float32))
    return tensor


def test_grpc_refuses_oversized_messages_and_metadata(server):
    client = grpcclient.InferenceServerClient(url=server.grpc_target)
    try:
        with pytest.raises(InferenceServerException) as caught:  # 80 KiB over 64 KiB
            client.infer("adder", [grpc_tensor(5120)])
        assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        with pytest.raises(InferenceServerException) as caught:
            client.infer("adder", [grpc_tensor(1)], headers={"x-big": "a" * (MAX_HEADER + 10)})
        assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "metadata size exceeds" in caught.value.message()
        result = client.infer("adder", [grpc_tensor(2)], headers={"x-fine": "a" * 1000})
        assert result.as_numpy("y").shape == (2, 4)
    finally:
        client.close()


def test_no_refusal_left_a_traceback(server):
    assert server.alive()
    assert "Traceback" not in server.output()
