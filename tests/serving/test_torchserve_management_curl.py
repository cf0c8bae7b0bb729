"""TorchServe's management calls as its documentation has users type them with ``curl``,
against a real server: register a ``.mar`` from the model store, list and describe,
register a second version, set the default, predict, unregister."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile

import pytest
import torch
from PIL import Image
from torch import nn

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

LABELS = {"0": ["n01", "tench"], "1": ["n02", "goldfish"], "2": ["n03", "shark"]}


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.fc = nn.Linear(4, 3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(image)).mean(dim=(2, 3)))


def write_mar(path) -> None:
    """An image classifier as torch-model-archiver packs it."""
    graph = io.BytesIO()
    torch.jit.save(torch.jit.trace(TinyCNN().eval(), torch.zeros(1, 3, 224, 224)), graph)
    manifest = {
        "createdOn": "01/01/2025 00:00:00",
        "runtime": "python",
        "model": {
            "modelName": "tiny",
            "serializedFile": "model.pt",
            "handler": "image_classifier",
            "modelVersion": "1.0",
        },
        "archiverVersion": "0.12.0",
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.pt", graph.getvalue())
        archive.writestr("index_to_name.json", json.dumps(LABELS))
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))


def curl(*args: str) -> tuple[int, dict | list]:
    """``curl -s ARGS``: the status and the JSON body."""
    done = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


def test_torchserve_management_as_curl_sends_it(start_server, tmp_path):
    model_store = tmp_path / "model_store"
    model_store.mkdir()
    write_mar(model_store / "tiny.mar")
    kitten = tmp_path / "kitten.jpg"
    Image.new("RGB", (320, 240), (200, 120, 40)).save(kitten, format="JPEG")
    store = tmp_path / "store"
    store.mkdir()
    args = ["--store", str(store), "--model-source-root", str(model_store)]
    with start_server(args, tmp_path / "server.log") as server:
        management = server.management_url
        status, body = curl("-X", "POST", f"{management}/models?url=tiny.mar&initial_workers=1")
        assert status == 200, body
        assert body["status"].startswith('Model "tiny" Version: 1 registered'), body

        status, body = curl(f"{management}/models")
        assert status == 200 and [m["modelName"] for m in body["models"]] == ["tiny"], body
        status, body = curl(f"{management}/models/tiny")
        assert status == 200 and body[0]["modelName"] == "tiny", body
        assert body[0]["modelVersion"] == "1" and body[0]["workers"][0]["status"] == "READY"

        status, body = curl("-X", "POST", f"{management}/models?url=tiny.mar&model_name=tiny")
        assert status == 200 and "Version: 2" in body["status"], body
        status, body = curl(f"{management}/models/tiny/all")
        assert [v["modelVersion"] for v in body] == ["1", "2"], body
        status, body = curl("-X", "PUT", f"{management}/models/tiny/2.0/set-default")
        assert status == 200 and "2" in body["status"], body

        status, body = curl(f"{server.url}/predictions/tiny", "-T", str(kitten))
        assert status == 200 and set(body) <= {"tench", "goldfish", "shark"}, body
        status, body = curl(f"{server.url}/predictions/tiny/1", "-T", str(kitten))
        assert status == 200, body

        status, body = curl("-X", "DELETE", f"{management}/models/tiny/1.0")
        assert status == 200 and "unregistered" in body["status"], body
        status, body = curl(f"{management}/models/tiny/1")
        assert status == 404 and body["type"] == "ModelVersionNotFoundException", body
        status, body = curl("-X", "DELETE", f"{management}/models/tiny")
        assert status == 200, body
        status, body = curl(f"{management}/models/tiny")
        assert status == 404 and body["code"] == 404, body
        status, body = curl("-X", "POST", f"{management}/models?url=https://example.com/x.mar")
        assert status == 403 and "remote" in body["message"], body
