"""The Serve config file and the builder's arguments, without a Ray cluster: Serve's own
schema accepts ``deploy/ray/serve.yaml``, and the builders build what it names."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from torchferry.cli import main
from torchferry.errors import InvalidInput
from torchferry.ray import app, manager, settings_from_args

SERVE_YAML = Path(__file__).parents[2] / "deploy" / "ray" / "serve.yaml"
#: A store and tokens: what management on Ray needs wherever the proxy listens.
GUARDED = {"store": "/s", "auth": True}


def test_serves_config_schema_accepts_the_file():
    config = ServeDeploySchema.model_validate(yaml.safe_load(SERVE_YAML.read_text()))
    paths = {a.name: a.import_path for a in config.applications}
    assert paths == {
        "torchferry": "torchferry.ray:app",
        "torchferry-manage": "torchferry.ray:manager",
    }
    assert {a.route_prefix for a in config.applications} == {"/", "/manage"}


def test_the_builders_build_the_files_applications(tmp_path):
    config = yaml.safe_load(SERVE_YAML.read_text())
    for entry, builder in zip(config["applications"], (app, manager), strict=True):
        args = {**entry["args"], "store": str(tmp_path)}
        built = builder(args)
        deployment = built._bound_deployment  # what serve.run would deploy
        if builder is app:
            assert deployment.num_replicas == 2
            assert deployment.ray_actor_options == {"num_cpus": 1.0, "num_gpus": 0.0}
            replica_settings = built._bound_deployment.init_args[0]
            assert replica_settings["store"] == str(tmp_path)
            assert replica_settings["batching"] == {
                "max_batch_size": 32, "max_delay_ms": 2.0,
                "mode": None, "max_latency_ms": None, "instances": None,
            }  # fmt: skip
            assert replica_settings["grpc_port"] is None
        else:
            assert deployment.num_replicas == 1


def test_arguments_are_checked():
    with pytest.raises(InvalidInput, match=r"management API on Ray .*--auth; auth: true"):
        settings_from_args({"store": "/s"})  # the proxy's address is not the builder's to see
    with pytest.raises(InvalidInput, match="set ssl_certfile and ssl_keyfile in the config"):
        settings_from_args({"store": "/s", "auth": True, "tls_cert": "c", "tls_key": "k"})
    assert settings_from_args({"store": "/s", "management": False}).management is False
    with pytest.raises(InvalidInput, match=r"unknown torchferry\.ray:app argument\(s\) replicas"):
        settings_from_args({"store": "/s", "replicas": 2})
    with pytest.raises(InvalidInput, match="num_replicas or autoscaling, not both"):
        settings_from_args({**GUARDED, "num_replicas": 2, "autoscaling": {"max_replicas": 3}})
    with pytest.raises(InvalidInput, match="min_replicas 3 is above max_replicas 1"):
        settings_from_args({**GUARDED, "autoscaling": {"min_replicas": 3, "max_replicas": 1}})
    scaled = settings_from_args({**GUARDED, "autoscaling": {"max_replicas": 4}, "threads": 2})
    options = scaled.deployment_options()
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 8.0,
    }
    assert "num_replicas" not in options
    assert scaled.replica_settings().threads == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--autoscale", "3:1"], "min_replicas 3 is above max_replicas 1"),
        (["--autoscale", "two"], "expected MIN:MAX replicas"),
        (["--replicas", "2", "--autoscale", "1:2"], "not allowed with argument"),
        (["--workers", "2"], "--workers does not apply with --ray"),
        (["--replicas", "0"], "num_replicas: Input should be greater than or equal to 1"),
        (["--host", "0.0.0.0"], "turn on tokens (--auth; auth: true in a Serve config"),
        (["--ray-address", "auto"], "answers on the proxies of the Serve at auto"),
        (["--model-dir", "/m"], "--model-dir (model_dir) is not served on Ray"),
        (["--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "a"], "mutual TLS"),
    ],
)
def test_serve_ray_usage_errors_are_one_line_with_exit_code_2(tmp_path, capsys, args, message):
    try:
        code = main(["serve", "--ray", "--store", str(tmp_path), *args])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    error = capsys.readouterr().err
    assert message in " ".join(error.split())  # rich may wrap the line
    assert "Traceback" not in error


def test_serve_ray_without_ray_says_what_to_install(tmp_path, capsys, monkeypatch):
    for name in [
        m for m in sys.modules if m == "torchferry.ray" or m.startswith("torchferry.ray.")
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where it is missing
    assert main(["serve", "--ray", "--store", str(tmp_path)]) == 2
    assert "pip install 'torchferry[ray]'" in capsys.readouterr().err
