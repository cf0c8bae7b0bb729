"""TorchServe's inference API, driven the way TorchServe users drive it (curl-shaped calls),
against a real server over a store imported from real ``.mar`` files."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from torchferry.importers import import_model
from torchferry.serving.app import build_app
from torchferry.serving.repository import ModelRepository
from torchferry.serving.settings import ServerSettings
from torchferry.signature import TensorSpec

#: index 4 has no label: TorchServe's handler would fail; here it is answered as "4"
LABELS = {"0": ["n01", "tench"], "1": ["n02", "goldfish"], "2": ["n03", "tabby"],
          "3": ["n04", "shark"], "5": ["n05", "ray"], "6": ["n06", "cock"]}  # fmt: skip


class Classifier(nn.Module):
    """7 classes; biases make ``tabby`` then the unlabelled class 4 win for any image."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.fc = nn.Linear(4, 7)
        with torch.no_grad():
            self.fc.weight.mul_(0.1)
            self.fc.bias.copy_(torch.tensor([0.0, 0.5, 10.0, 0.2, 6.0, 0.1, 0.3]))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(image)).mean(dim=(2, 3)))


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def write_mar(path: Path, model: dict[str, Any], files: dict[str, bytes]) -> Path:
    manifest = {"runtime": "python", "model": model, "archiverVersion": "0.12.0"}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
    return path


def traced(module: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(module.eval(), example), buffer)
    return buffer.getvalue()


def build_store(root: Path) -> Path:
    """``classifier`` (image_classifier .mar) and ``scale`` v1 (x2) and v2 (x3, base_handler)."""
    store = root / "store"
    pt = traced(Classifier(), torch.zeros(1, 3, 224, 224))
    model = {"modelName": "classifier", "serializedFile": "model.pt", "modelVersion": "1.0",
             "handler": "image_classifier"}  # fmt: skip
    files = {"model.pt": pt, "index_to_name.json": json.dumps(LABELS).encode()}
    import_model(write_mar(root / "classifier.mar", model, files), store=store)
    model = {"modelName": "scale", "serializedFile": "scale.pt", "handler": "base_handler"}
    for factor in (2.0, 3.0):
        files = {"scale.pt": traced(Scale(factor), torch.ones(1, 4))}
        mar = write_mar(root / "scale.mar", model, files)
        import_model(mar, store=store, inputs=[TensorSpec.parse("x:-1,4")])
    return store


@pytest.fixture(scope="module")
def ts_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(tmp_path_factory.mktemp("torchserve"))


@pytest.fixture(scope="module")
def ts_server(
    ts_store: Path, start_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    # TorchServe's API is HTTP only
    args = ["--store", str(ts_store), "--threads", "1", "--log-level", "warning", "--no-grpc"]
    with start_server(args, tmp_path_factory.mktemp("logs") / "ts.log") as server:
        yield server


@pytest.fixture(scope="module")
def ts(ts_server: Any) -> Iterator[httpx.Client]:
    with ts_server.client() as client:
        yield client


@pytest.fixture(scope="module")
def kitten(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("images") / "kitten.jpg"
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(path)
    return path


def check_top5(body: Any) -> None:
    assert isinstance(body, dict) and len(body) == 5
    assert list(body)[:2] == ["tabby", "4"]  # labels from index_to_name.json, else the index
    scores = list(body.values())
    assert scores == sorted(scores, reverse=True) and 0.9 < sum(scores) <= 1.0 + 1e-6


def test_ping(ts):
    answer = ts.get("/ping")
    assert answer.status_code == 200 and answer.json() == {"status": "Healthy"}


def test_raw_body_put_and_post(ts, kitten):
    put = ts.put("/predictions/classifier", content=kitten.read_bytes())  # curl -T kitten.jpg
    assert put.status_code == 200, put.text
    check_top5(put.json())
    headers = {"content-type": "image/jpeg"}
    post = ts.post("/predictions/classifier", content=kitten.read_bytes(), headers=headers)
    assert post.json() == put.json()
    # the same model through /predict, as the handler's own top-k rows
    plain = ts.post("/predict/classifier", content=kitten.read_bytes(), headers=headers).json()
    assert {r["label"] or str(r["class"]): r["score"] for r in plain["result"][0]} == put.json()


def test_multipart_data_and_file_fields(ts, kitten):
    image = kitten.read_bytes()
    data = ts.post("/predictions/classifier", files={"data": ("kitten.jpg", image)})
    assert data.status_code == 200, data.text
    check_top5(data.json())
    file = ts.put("/predictions/classifier/1", files={"file": ("k.jpg", image, "image/jpeg")})
    assert file.json() == data.json()
    several = ts.post("/predictions/classifier", files=[("data", image), ("data", image)])
    assert several.json() == [data.json(), data.json()]  # every file answered, in order
    # a text field holding base64, as TorchServe's vision handlers accept
    text = {"data": (None, base64.b64encode(image).decode())}
    assert ts.post("/predictions/classifier", files=text).json() == data.json()
    assert ts.post("/predictions/classifier", json={"data": "@@"}).status_code == 400


def test_versions_tensor_models_and_json(ts):
    assert ts.post("/predictions/scale", json=[1, 2, 3, 4]).json() == [3.0, 6.0, 9.0, 12.0]
    assert ts.post("/predictions/scale/1", json=[1, 2, 3, 4]).json() == [2.0, 4.0, 6.0, 8.0]
    rows = ts.put("/predictions/scale/1.0", json={"data": [[1, 1, 1, 1], [0, 0, 0, 1]]})
    assert rows.json() == [[2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 2.0]]  # several rows: a list
    # curl -d '[[...]]' (form-urlencoded), curl -T rows.json (no content type), a JSON file
    form = {"content-type": "application/x-www-form-urlencoded"}
    one = ts.post("/predictions/scale/2", content=b"[[1,2,3,4]]", headers=form)
    assert one.json() == [3.0, 6.0, 9.0, 12.0]  # one row: the row itself
    assert ts.put("/predictions/scale", content=b"[0, 0, 1, 0]").json() == [0.0, 0.0, 3.0, 0.0]
    upload = ts.post("/predictions/scale", files={"data": ("x.json", b"[[1, 0, 0, 0]]")})
    assert upload.json() == [3.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "kind"),
    [
        ("PUT", "/predictions/nope", b"x", 404, "ModelNotFoundException"),
        ("PUT", "/predictions/classifier/9", b"x", 404, "ModelVersionNotFoundException"),
        ("PUT", "/predictions/classifier", b"not an image", 400, "BadRequestException"),
        ("POST", "/predictions/classifier", b"", 400, "BadRequestException"),
        ("POST", "/predictions/scale", b"[[1, 2]]", 400, "BadRequestException"),
        ("POST", "/predictions/scale", b"{oops", 400, "BadRequestException"),
    ],
)
def test_errors_in_torchserve_shape(ts, method, path, body, status, kind):
    answer = ts.request(method, path, content=body)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert error["code"] == status and error["type"] == kind and error["message"]


def test_error_messages_say_what_is_wrong(ts):
    missing = ts.put("/predictions/nope", content=b"x").json()["message"]
    assert "nope" in missing and "classifier" in missing
    assert "not an image" in ts.put("/predictions/classifier", content=b"nope").json()["message"]
    assert "'x'" in ts.post("/predictions/scale", json=[[1, 2]]).json()["message"]


def test_management_describe(ts):
    listed = ts.get("/models").json()
    assert listed == {"models": [{"modelName": "classifier", "modelUrl": "classifier"},
                                 {"modelName": "scale", "modelUrl": "scale"}]}  # fmt: skip
    assert ts.get("/models", params={"limit": 1}).json()["nextPageToken"] == "1"
    (scale,) = ts.get("/models/scale").json()
    assert scale["modelName"] == "scale" and scale["modelVersion"] == "2"
    assert scale["workers"][0]["status"] == "READY"
    assert [d["modelVersion"] for d in ts.get("/models/scale/all").json()] == ["1", "2"]
    assert ts.get("/models/scale/1.0").json()[0]["modelVersion"] == "1"
    assert ts.get("/models/nope").json()["type"] == "ModelNotFoundException"


def test_other_protocols_still_route(ts):
    v1 = ts.post("/v1/models/scale:predict", json={"instances": [[1, 1, 1, 1]]})
    assert v1.json() == {"predictions": [[3.0, 3.0, 3.0, 3.0]]}
    v2 = ts.get("/v2/models/classifier")
    assert v2.status_code == 200 and v2.json()["name"] == "classifier"
    assert ts.post("/predict/scale", json={"data": [[1, 1, 1, 1]]}).status_code == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="the curl binary is not installed")
def test_real_curl(ts_server, kitten):
    url = f"{ts_server.url}/predictions/classifier"
    for args in (["-T", kitten.name], ["-X", "POST", "-F", f"data=@{kitten.name}"]):
        result = subprocess.run(
            ["curl", "-sS", "--fail-with-body", url, *args],
            cwd=kitten.parent, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
        check_top5(json.loads(result.stdout))
    ping = subprocess.run(["curl", "-sS", f"{ts_server.url}/ping"], capture_output=True, check=True)
    assert json.loads(ping.stdout) == {"status": "Healthy"}


def test_unhealthy_until_started(ts_store):
    settings = ServerSettings(store=ts_store, threads=1)
    repository = ModelRepository(settings)
    app = build_app(settings, repository)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            answer = await client.get("/ping")
            assert answer.status_code == 503 and answer.json() == {"status": "Unhealthy"}
            await repository.start()
            try:
                assert (await client.get("/ping")).json() == {"status": "Healthy"}
            finally:
                await repository.close()

    asyncio.run(scenario())
