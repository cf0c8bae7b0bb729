"""The container image, tested without building one (this machine has no Docker engine).

Statically: the Dockerfile's stages, user, ports, health check and environment, and
docker-compose.yml with its Prometheus configuration, against the ports agreed with the
KServe runtime. Dynamically: docker/install.sh (the Dockerfile's install step) runs into a
fresh virtual environment, and the entry point it installs serves a store with the image's
own environment, read from the Dockerfile, answering the health check the image runs, one V2
inference and one management call.

As root, the server runs as in the container: in its own network namespace (so the image's
fixed ports are free), as the image's UID, with the root filesystem read-only (the venv and
the source tree with it), a fresh tmpfs on /tmp and the store bound at /mnt/models;
afterwards the store must hold nothing new but its .torchferry/ folder. The venv is in a
temporary folder, not at /opt/torchferry: PATH is the image's with that one folder swapped.
Without root, the entry point serves on free ports set through the image's TORCHFERRY_*
variables, with the store and TMPDIR in temporary folders.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
import yaml
from dockerfile_reader import Stage, read_stages
from onnx import TensorProto, helper

from torchferry._version import __version__
from torchferry.archive import Manifest, ModelStore
from torchferry.serving.process import free_ports
from torchferry.signature import ModelSignature, TensorSpec

ROOT = Path(__file__).resolve().parents[2]
#: The ports agreed with the KServe runtime (deploy/kserve/): KServe's HTTP 8080 and gRPC
#: 8081, hence management on 8085 (not our 8081), and metrics on 8082.
IMAGE_PORTS = {"HTTP": 8080, "GRPC": 8081, "MANAGEMENT": 8085, "METRICS": 8082}
VENV_IN_IMAGE = "/opt/torchferry"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MODEL = "doubler"
INSTALL_TIMEOUT_S = 900
#: The tests that use the fresh venv: its install takes minutes on a loaded machine.
takes_an_install = pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)


def stages() -> tuple[Stage, Stage]:
    builder, runtime = read_stages(ROOT / "Dockerfile")
    return builder, runtime


def image_env() -> dict[str, str]:
    return stages()[1].assignments("ENV")


def image_uid() -> int:
    return int(stages()[1].last("USER").split(":")[0])


# -- the Dockerfile and compose, statically --------------------------------------------------


def test_the_builder_stage_installs_cpu_torch_with_the_install_script():
    builder, runtime = stages()
    assert builder.name == "builder" and runtime.base == builder.base
    assert any(f"docker/install.sh {VENV_IN_IMAGE} /src" in run for run in builder.all("RUN")), (
        "the builder must run docker/install.sh into /opt/torchferry"
    )
    args = builder.assignments("ARG")
    assert args["TORCH_INDEX_URL"] == CPU_INDEX
    makefile_torch = next(
        line.split(":=")[1].strip()
        for line in (ROOT / "Makefile").read_text().splitlines()
        if line.startswith("TORCH :=")
    )
    assert args["TORCH"] == makefile_torch, "the image's torch is the one the tests use"
    assert f'"${{TORCH:={makefile_torch}}}"' in (ROOT / "docker/install.sh").read_text()


def test_the_runtime_stage_is_the_venv_run_by_a_non_root_user_on_the_agreed_ports():
    _, runtime = stages()
    assert f"--from=builder {VENV_IN_IMAGE} {VENV_IN_IMAGE}" in runtime.all("COPY")
    user, _, group = runtime.last("USER").partition(":")
    assert user.isdigit() and int(user) != 0 and group.isdigit(), "a numeric, non-root user"
    healthcheck = runtime.last("HEALTHCHECK")
    assert json.loads(healthcheck.partition("CMD ")[2]) == ["torchferry-healthcheck"]
    assert json.loads(runtime.last("ENTRYPOINT")) == ["torchferry-entrypoint"]
    assert {int(port) for port in runtime.last("EXPOSE").split()} == set(IMAGE_PORTS.values())
    env = image_env()
    for listener, port in IMAGE_PORTS.items():
        assert env[f"TORCHFERRY_{listener}_PORT"] == str(port)
    assert env["TORCHFERRY_STORE"] == "/mnt/models"  # where KServe mounts a model
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["TMPDIR"] == "/tmp"
    assert env["PATH"].startswith(f"{VENV_IN_IMAGE}/bin:")


def test_compose_runs_it_read_only_and_prometheus_scrapes_its_metrics_port():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = image_env()
    server = compose["services"]["torchferry"]
    assert server["read_only"] is True and "/tmp" in server["tmpfs"]
    assert any(volume.split(":")[1] == env["TORCHFERRY_STORE"] for volume in server["volumes"])
    published = {int(mapping.split(":")[1]) for mapping in server["ports"]}
    assert published == {IMAGE_PORTS["HTTP"], IMAGE_PORTS["GRPC"], IMAGE_PORTS["METRICS"]}
    assert server["healthcheck"]["test"] == ["CMD", "torchferry-healthcheck"]

    prometheus = compose["services"]["prometheus"]
    config_path, _, inside = prometheus["volumes"][0].partition(":")
    assert inside.startswith("/etc/prometheus/prometheus.yml")
    config = yaml.safe_load((ROOT / config_path).read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"torchferry:{IMAGE_PORTS['METRICS']}"]


def _entry_point_command(tmp_path: Path, *args: str) -> list[str]:
    """The command line the entry point runs for ``args``, under the image's environment,
    as told by a stand-in ``torchferry`` that prints its arguments."""
    (tmp_path / "torchferry").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (tmp_path / "torchferry").chmod(0o755)
    env = {**image_env(), "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    entry = ROOT / "docker/entrypoint.sh"
    done = subprocess.run(
        ["sh", str(entry), *args], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_entry_point_serves_the_store_on_the_image_ports_unless_told_otherwise(tmp_path):
    image = ["--store", "/mnt/models", "--host", "0.0.0.0", "--port", "8080"]
    image += ["--grpc-port", "8081", "--management-port", "8085", "--metrics-port", "8082"]
    assert _entry_point_command(tmp_path) == ["serve", *image]
    assert _entry_point_command(tmp_path, "serve", "--workers", "2") == [
        "serve", *image, "--workers", "2",
    ]  # fmt: skip
    # KServe's spellings replace the defaults they name; so does a --no-... form
    kserve = ["--model_name=m", "--model_dir=/mnt/models", "--http_port=9000", "--grpc_port=9001"]
    assert _entry_point_command(tmp_path, *kserve, "--no-metrics") == [
        "serve", "--host", "0.0.0.0", "--management-port", "8085", *kserve, "--no-metrics",
    ]  # fmt: skip
    # a command runs as given
    assert _entry_point_command(tmp_path, "torchferry", "--version") == ["--version"]


# -- the install script into a fresh venv, and the entry point serving -----------------------


@dataclass
class Installed:
    work: Path
    venv: Path  # on this machine
    isolated: bool  # root: namespaces, the image's paths, ports and user

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


def _reachable_by_anyone(path: str) -> bool:
    real = Path(os.path.realpath(path))
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in (real, *real.parents))


def _interpreter() -> str:
    """A Python 3.11 that the image's UID can run (pyenv's lives under root's 0700 home)."""
    candidates = [shutil.which("python3.11"), "/usr/local/bin/python3.11", "/usr/bin/python3.11"]
    found = [c for c in candidates if c and os.path.exists(c)]
    usable = [c for c in found if _reachable_by_anyone(c)]
    return (usable or found or [sys.executable])[0]


def _build_context(target: Path) -> Path:
    """What `docker build` sends, by .dockerignore's allow list: the install reads no more."""
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    target.mkdir()
    for name in allowed:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        else:
            shutil.copy2(source, target / name)
    return target


def _write_store(root: Path) -> None:
    """One tiny ONNX model, ``doubler``: y = 2 x for x of shape [N, 3]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "g", [x], [y], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    spec = (-1, 3)
    manifest = Manifest(
        name=MODEL,
        version=1,
        runtime="onnxruntime",
        graphs={"onnxruntime": "model.onnx"},
        signature=ModelSignature(
            inputs=(TensorSpec(name="x", datatype="FP32", shape=spec),),
            outputs=(TensorSpec(name="y", datatype="FP32", shape=spec),),
        ),
    )
    ModelStore(root).write(manifest, lambda folder: onnx.save(model, str(folder / "model.onnx")))


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    isolated = os.geteuid() == 0 and all(map(shutil.which, ("unshare", "setpriv", "ip")))
    # outside /tmp, which the isolated server's own tmpfs hides; open to the image's UID
    work = Path(tempfile.mkdtemp(prefix="torchferry-image-", dir="/var/tmp" if isolated else None))
    try:
        work.chmod(0o755)
        source = _build_context(work / "context")
        venv = work / "venv"
        venv.mkdir(mode=0o755)
        install = ["sh", str(source / "docker/install.sh"), str(venv), str(source)]
        # the plain index: this machine's pip finds a CPU torch of the image's version on disk
        env = {**os.environ, "PYTHON": _interpreter(), "TORCH_INDEX_URL": ""}
        env["BYTECODE"] = "no-torch"  # the server below never imports them; the image does all
        env["TORCH"] = stages()[0].assignments("ARG")["TORCH"]
        done = subprocess.run(
            install, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield Installed(work, venv, isolated)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@takes_an_install
def test_the_venv_runs_torchferry_and_holds_its_bytecode(installed):
    done = subprocess.run(
        [str(installed.bin / "torchferry"), "--version"],
        capture_output=True,
        text=True,
        env={"PATH": str(installed.bin), "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"torchferry {__version__}"
    # read-only at run time: every module of the package was compiled at build time
    package = next((installed.venv / "lib").glob("python3.*/site-packages/torchferry"))
    missing = [
        source.relative_to(package)
        for source in package.rglob("*.py")
        if not list((source.parent / "__pycache__").glob(f"{source.stem}.*.pyc"))
    ]
    assert not missing


#: Inside the server's namespace: wait for the image's health check, then one V2 inference,
#: one management call that persists state, one scrape; print what came back as JSON.
CLIENT = """
import json, socket, sys, urllib.request
http, management, metrics, grpc, model = sys.argv[1:]
def call(port, path, body=None, method=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, answer.read().decode()
infer = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
status, body = call(http, f"/v2/models/{model}/infer", infer)
result = {"infer": [status, json.loads(body)]}
result["set_default"] = call(management, f"/models/{model}/1/set-default", method="PUT")[0]
result["metrics"] = "nv_inference_request_success" in call(metrics, "/metrics")[1]
with socket.create_connection(("127.0.0.1", int(grpc)), timeout=10):
    result["grpc_listens"] = True
print(json.dumps(result))
"""


def _container(installed: Installed, store: Path) -> tuple[list[str], list[str], str]:
    """The command that runs a script as the container would (as root: namespaces), the
    script's first lines (the mounts), and the prefix that runs a command as the image's user."""
    if not installed.isolated:
        return [], ["set -u"], ""
    uid = image_uid()
    mounts = [
        "set -u",
        "ip link set lo up",
        # the store where the image has it, then the root read-only (the venv and the
        # source tree with it) and a fresh tmpfs for TMPDIR
        "mount -t tmpfs tmpfs /mnt && mkdir /mnt/models",
        f"mount --bind {shlex.quote(str(store))} /mnt/models && mount -o remount,ro /mnt",
        "mount -o remount,bind,ro /",
        "mount -t tmpfs -o mode=1777 tmpfs /tmp",
    ]
    run_as = f"setpriv --reuid={uid} --regid={uid} --clear-groups "
    return ["unshare", "--mount", "--net", "--fork"], mounts, run_as


def _run(command: list[str], lines: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, "sh", "-c", "\n".join(lines)], capture_output=True, text=True, timeout=240
    )


def _serve_lines(env: dict[str, str], run_as: str) -> list[str]:
    """Start the entry point as the image would, wait until the image's health check passes,
    run CLIENT, stop the server (SIGTERM: its drain) and report its exit."""
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    ports = [env[f"TORCHFERRY_{k}_PORT"] for k in ("HTTP", "MANAGEMENT", "METRICS", "GRPC")]
    client = [sys.executable, "-c", CLIENT, *ports, MODEL]
    return [
        f"{run_as}env -i {assignments} torchferry-entrypoint &",
        "server=$!",
        "tries=0",
        f"until env -i {assignments} torchferry-healthcheck 2>/dev/null; do",
        '  kill -0 "$server" 2>/dev/null || { echo "server exited" >&2; exit 3; }',
        "  tries=$((tries + 1)); [ $tries -lt 600 ] || { echo 'never ready' >&2; exit 4; }",
        "  sleep 0.2",
        "done",
        f"{shlex.join(client)}; client=$?",
        'kill -TERM "$server"; wait "$server"; echo "server exit $?" >&2',
        "exit $client",
    ]


@takes_an_install
def test_the_entry_point_serves_the_store_with_the_image_settings(installed):
    store = installed.work / "store"
    _write_store(store)
    env = image_env()
    env["PATH"] = env["PATH"].replace(f"{VENV_IN_IMAGE}/bin", str(installed.bin))
    if not installed.isolated:
        env["TORCHFERRY_STORE"] = str(store)
        env["TMPDIR"] = env["HOME"] = str(installed.work)
        for listener, port in zip(IMAGE_PORTS, free_ports(len(IMAGE_PORTS)), strict=True):
            env[f"TORCHFERRY_{listener}_PORT"] = str(port)
    command, mounts, run_as = _container(installed, store)
    if installed.isolated:
        # a store the image's user cannot read: one clear line, before any worker starts
        assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
        refused = _run(command, [*mounts, f"{run_as}env -i {assignments} torchferry-entrypoint"])
        assert refused.returncode == 1, refused.stderr[-4000:]
        assert "cannot read the model store" in refused.stderr
        assert "Traceback" not in refused.stderr
        for path in (store, *store.rglob("*")):  # chown -R, as docs/container.md says
            os.chown(path, image_uid(), image_uid())
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    done = _run(command, [*mounts, *_serve_lines(env, run_as)])
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    status, answer = result["infer"]
    assert status == 200 and answer["outputs"][0]["data"] == [2.0, 4.0, 6.0]
    assert result["set_default"] == 200
    assert result["metrics"] and result["grpc_listens"]
    assert "server exit 0" in done.stderr, done.stderr[-4000:]
    # the store is written only under .torchferry/: the desired state, as the server's user
    after = sorted(p.relative_to(store) for p in store.rglob("*"))
    new = [p for p in after if p not in before]
    assert new and all(p.parts[0] == ".torchferry" for p in new), new
    state = store / ".torchferry" / "state.json"
    assert state.is_file()
    if installed.isolated:
        assert state.stat().st_uid == image_uid()
