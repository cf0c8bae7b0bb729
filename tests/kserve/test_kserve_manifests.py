"""``deploy/kserve/``: every file is what the KServe SDK's model classes accept, and the
runtime and the examples agree with each other and with the ports the image uses.

The SDK checks run in the package's child process (:mod:`kserve_probe`, which uses
:func:`kserve_sdk.deserialize`): every file and every broken variant of one in one request."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sdk_child import SdkChild, kserve_imported

DEPLOY = Path(__file__).parents[2] / "deploy" / "kserve"
RUNTIME = DEPLOY / "cluster-serving-runtime.yaml"
SERVICES = sorted(DEPLOY.glob("inferenceservice-*.yaml"))
KINDS = {
    "ClusterServingRuntime": "V1alpha1ClusterServingRuntime",
    "InferenceService": "V1beta1InferenceService",
}
#: Agreed with the container image (docs/container.md): KServe's HTTP and gRPC ports, then
#: ours moved out of their way.
PORTS = {
    "--http_port": 8080,
    "--grpc_port": 8081,
    "--management-port": 8085,
    "--metrics-port": 8082,
}


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def options(args: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in args if arg.startswith("--") and "=" in arg)


def _misspell_args(runtime: dict[str, Any]) -> None:
    runtime["spec"]["containers"][0]["agrs"] = runtime["spec"]["containers"][0].pop("args")


def _drop_container_name(runtime: dict[str, Any]) -> None:
    del runtime["spec"]["containers"][0]["name"]


def _list_as_format_name(service: dict[str, Any]) -> None:
    service["spec"]["predictor"]["model"]["modelFormat"]["name"] = ["torchferry"]


#: What Kubernetes would refuse: case -> (the file, how it is broken, what the refusal names).
BROKEN: dict[str, tuple[Path, Callable[[dict[str, Any]], None], str]] = {
    "misspelt-field": (RUNTIME, _misspell_args, "agrs"),
    "missing-required": (RUNTIME, _drop_container_name, "name"),
    "wrong-type": (SERVICES[0], _list_as_format_name, "expected str"),
}


@pytest.fixture(scope="module")
def verdicts(kserve_sdk: SdkChild) -> dict[str, Any]:
    """The strict check's verdict on every file (by name) and every case of BROKEN."""
    documents = {}
    for path in [RUNTIME, *SERVICES]:
        data = load(path)
        if data.get("kind") in KINDS:  # else test_the_sdk_accepts_it says which
            documents[path.name] = {"type": KINDS[data["kind"]], "data": data}
    for case, (path, breaks, _) in BROKEN.items():
        data = load(path)
        breaks(data)
        documents[case] = {"type": KINDS[data["kind"]], "data": data}
    return kserve_sdk.ask("validate", documents)


@pytest.mark.parametrize("path", [RUNTIME, *SERVICES], ids=lambda p: p.name)
def test_the_sdk_accepts_it(path: Path, verdicts: dict[str, Any]) -> None:
    data = load(path)
    assert data["apiVersion"].startswith("serving.kserve.io/")
    assert data["kind"] in KINDS, f"{path.name}: unexpected kind {data['kind']!r}"
    verdict = verdicts[path.name]
    assert verdict["outcome"] == "accepted", verdict["message"]


@pytest.mark.parametrize("case", BROKEN)
def test_the_check_refuses_what_kubernetes_would(case: str, verdicts: dict[str, Any]) -> None:
    """The strict check is not a pass-through: a misspelt field, a missing required one and a
    wrongly typed value are each refused, by the check (not a crash), naming what is wrong."""
    verdict = verdicts[case]
    assert verdict["outcome"] == "refused", f"{case}: {verdict['outcome']} {verdict['message']}"
    assert re.search(BROKEN[case][2], verdict["message"]), verdict["message"]


def test_runtime_formats_protocols_and_ports() -> None:
    spec = load(RUNTIME)["spec"]
    formats = {f["name"]: f for f in spec["supportedModelFormats"]}
    assert set(formats) == {"torchferry", "onnx", "pytorch"}
    assert all(f["autoSelect"] for f in formats.values())
    assert spec["protocolVersions"] == ["v1", "v2", "grpc-v2"]
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(PORTS["--metrics-port"])
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    given = options(container["args"])
    assert {flag: int(given[flag]) for flag in PORTS} == PORTS
    assert given["--model_name"] == "{{.Name}}"
    assert given["--model_dir"] == "/mnt/models"
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert not security["allowPrivilegeEscalation"]
    # a read-only root needs a writable TMPDIR for imports
    tmpdir = {e["name"]: e.get("value") for e in container["env"]}["TMPDIR"]
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounted[tmpdir] in {v["name"] for v in spec["volumes"]}


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_each_example_finds_this_runtime(path: Path) -> None:
    runtime = load(RUNTIME)
    model = load(path)["spec"]["predictor"]["model"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model.get("runtime", runtime["metadata"]["name"]) == runtime["metadata"]["name"]
    assert model.get("protocolVersion", "v1") in runtime["spec"]["protocolVersions"]
    assert model["storageUri"]
    if model.get("protocolVersion") == "grpc-v2":  # the gRPC port exposed, named h2c
        (port,) = model["ports"]
        assert (port["name"], port["containerPort"]) == ("h2c", PORTS["--grpc_port"])


def test_examples_cover_every_format_and_grpc() -> None:
    models = [load(path)["spec"]["predictor"]["model"] for path in SERVICES]
    assert {m["modelFormat"]["name"] for m in models} == {"torchferry", "onnx", "pytorch"}
    assert any(m.get("protocolVersion") == "grpc-v2" for m in models)


def test_the_sdk_stays_out_of_this_process() -> None:
    """``import kserve`` here would break every test importing tritonclient or our protos."""
    assert "kserve_sdk" not in sys.modules
    assert not kserve_imported()
