"""A model with data-dependent control flow (a Python ``if`` on tensor values), which neither
tracing nor ONNX capture keep, served with ``--runtime eager``: it matches eager PyTorch on
both branches, over HTTP and gRPC, and is refused without ``--trust-code``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

import torchferry.cli as cli
from torchferry.export.loader import load_model

SOURCE = """
import torch
from torch import nn


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if bool(x.sum() > 0):
            return y * 2
        return -y


def make() -> nn.Module:
    return Gate()
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    user = tmp_path_factory.mktemp("user_code")
    factory = user / "gate.py"
    factory.write_text(SOURCE)
    store = tmp_path_factory.mktemp("store")
    target = f"{factory}:make"
    code = cli.main(
        ["export", target, "--name", "gate", "--input", "x:-1,4:float32", "--store", str(store),
         "--format", "eager"]
    )  # fmt: skip
    assert code == 0
    return store, factory


def test_without_trust_the_eager_model_is_refused(exported):
    store, _ = exported
    command = [sys.executable, "-m", "torchferry.cli", "serve", "--store", str(store)]
    command += ["--runtime", "eager", "--port", "0", "--no-grpc"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--trust-code" in done.stdout + done.stderr


def test_both_branches_match_eager_pytorch(exported, start_server, tmp_path):
    store, factory = exported
    eager = load_model(f"{factory}:make").eval()
    from safetensors.torch import load_file

    eager.load_state_dict(load_file(store / "gate" / "1" / "weights.safetensors"))
    positive = np.ones((3, 4), np.float32)
    negative = -np.ones((2, 4), np.float32)
    args = ["--store", str(store), "--runtime", "eager", "--trust-code", "--threads", "1"]
    with start_server(args, tmp_path / "server.log") as server, server.client() as http:
        meta = http.get("/v2/models/gate").json()
        assert meta["platform"] == "pytorch_eager"
        triton = grpcclient.InferenceServerClient(server.grpc_target)
        for x in (positive, negative):
            with torch.no_grad():
                expected = eager(torch.from_numpy(x)).numpy()
            answer = http.post("/predict/gate", json={"data": x.tolist()})
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(answer.json()["result"], expected, rtol=1e-6)
            tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            output = triton.infer("gate", [tensor]).as_numpy(meta["outputs"][0]["name"])
            np.testing.assert_allclose(output, expected, rtol=1e-6)
        triton.close()
