"""The KServe SDK's part of the tests, run as a child process: ``python kserve_probe.py``
reads requests, ``{"command": "validate" | "query", "request": ...}``, a JSON line each, from
stdin, and writes each answer as a JSON line to stdout, until stdin ends.

Why a child: ``import kserve`` registers KServe's ``grpc_predict_v2.proto`` (package
``inference``) in protobuf's default descriptor pool, where tritonclient's ``grpc_service.proto``
and our ``inference.proto`` register the same symbols under other file names; in one process
whichever comes second fails (``duplicate symbol 'inference.ServerLiveRequest'``). The pytest
process imports those two, so it must never import the SDK: :mod:`sdk_child` runs this, one
child for all the KServe tests (each ``import kserve`` costs seconds).

``validate``: ``{name: {"type": SDK class, "data": document}}`` ->
``{name: {"outcome": "accepted" | "refused" | "crashed", "message": str}}``.

``query``: ``{"x": rows, "servers": {key: {"url", "grpc_target", "name"}}}`` ->
``{key: {"v1" | "v2-json" | "v2-binary" | "grpc": answer or {"error": traceback}}}``, every
server asked by every client at once.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve_sdk import SchemaError, deserialize


def validate(documents: dict[str, Any]) -> dict[str, Any]:
    verdicts = {}
    for name, document in documents.items():
        try:
            deserialize(document["data"], document["type"])
            verdicts[name] = {"outcome": "accepted", "message": ""}
        except SchemaError as exc:
            verdicts[name] = {"outcome": "refused", "message": str(exc)}
        except Exception:  # not the check's refusal: a bug in it, which a test must see
            verdicts[name] = {"outcome": "crashed", "message": traceback.format_exc()}
    return verdicts


def _outputs(answer: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
            "data": output.as_numpy().tolist(),
        }
        for output in answer.outputs
    ]


def _tensor(x: np.ndarray, binary: bool) -> InferInput:
    tensor = InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


async def ask_v1(server: dict[str, str], x: np.ndarray) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v1", timeout=30))
    try:
        live = await client.is_server_live(server["url"])
        ready = await client.is_model_ready(server["url"], server["name"])
        answer = await client.infer(
            server["url"], {"instances": x.tolist()}, model_name=server["name"]
        )
        return {"live": live, "ready": ready, "predictions": answer["predictions"]}
    finally:
        await client.close()


async def ask_v2(server: dict[str, str], x: np.ndarray, binary: bool) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    request = InferRequest(server["name"], [_tensor(x, binary)])
    try:
        ready = await client.is_server_ready(server["url"])
        model_ready = await client.is_model_ready(server["url"], server["name"])
        answer = await client.infer(server["url"], request, model_name=server["name"])
        return {
            "ready": ready,
            "model_ready": model_ready,
            "model_name": answer.model_name,
            "outputs": _outputs(answer),
        }
    finally:
        await client.close()


async def ask_grpc(server: dict[str, str], x: np.ndarray) -> dict[str, Any]:
    client = InferenceGRPCClient(server["grpc_target"], timeout=30)
    try:
        ready = await client.is_server_ready()
        model_ready = await client.is_model_ready(server["name"])
        answer = await client.infer(InferRequest(server["name"], [_tensor(x, False)]))
        return {"ready": ready, "model_ready": model_ready, "outputs": _outputs(answer)}
    finally:
        await client.close()


async def _caught(ask: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """One client's answer, or its failure for the test that reads it (the others still run)."""
    try:
        return await ask()
    except Exception:
        return {"error": traceback.format_exc()}


async def query(request: dict[str, Any]) -> dict[str, Any]:
    x = np.asarray(request["x"], dtype=np.float32)
    asks: dict[tuple[str, str], Callable[[], Awaitable[dict[str, Any]]]] = {}
    for key, server in request["servers"].items():
        asks[key, "v1"] = lambda s=server: ask_v1(s, x)
        asks[key, "v2-json"] = lambda s=server: ask_v2(s, x, binary=False)
        asks[key, "v2-binary"] = lambda s=server: ask_v2(s, x, binary=True)
        asks[key, "grpc"] = lambda s=server: ask_grpc(s, x)
    answers = await asyncio.gather(*(_caught(ask) for ask in asks.values()))
    result: dict[str, dict[str, Any]] = {key: {} for key in request["servers"]}
    for (key, client), answer in zip(asks, answers, strict=True):
        result[key][client] = answer
    return result


def main() -> None:
    for line in sys.stdin:
        message = json.loads(line)
        if message["command"] == "validate":
            answer = validate(message["request"])
        elif message["command"] == "query":
            answer = asyncio.run(query(message["request"]))
        else:
            raise SystemExit(f"unknown command {message['command']!r}: validate or query")
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
