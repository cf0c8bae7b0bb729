"""``torchferry serve``'s management flags reach the settings, and test servers get a free
management port of their own."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from torchferry.cli import build_parser
from torchferry.cli.serve_cmd import settings_from_args
from torchferry.serving import process
from torchferry.serving.lifecycle.policy import VersionPolicy
from torchferry.serving.settings import ServerSettings
from torchferry.serving.tls import TLSConfigError


def settings_of(*argv: str) -> ServerSettings:
    return settings_from_args(build_parser().parse_args(["serve", "--store", "s", *argv]))


def test_management_defaults() -> None:
    settings = settings_of()
    assert settings.management_port == 8081 and settings.management_host is None
    assert settings.model_source_roots == [] and settings.source_roots() == [Path("s")]
    assert settings.poll_store_s is None
    assert settings.version_policy == VersionPolicy() and settings.model_version_policies == {}


def test_management_flags() -> None:
    settings = settings_of(
        "--management-port", "0",
        "--management-host", "0.0.0.0",
        "--model-source-root", "/models/incoming",
        "--model-source-root", "exports",
        "--poll-store", "2.5",
        "--version-policy", "latest:2",
        "--version-policy", "digits=specific:1,3",
        "--version-policy", "iris=all",
    )  # fmt: skip
    assert settings.management_port == 0 and settings.management_host == "0.0.0.0"
    assert settings.source_roots() == [Path("/models/incoming"), Path("exports")]
    assert settings.poll_store_s == 2.5
    assert settings.policy_for("resnet") == VersionPolicy(kind="latest", num_versions=2)
    assert settings.policy_for("digits") == VersionPolicy(kind="specific", versions=[1, 3])
    assert settings.policy_for("iris") == VersionPolicy(kind="all")
    assert settings_of("--no-management").management_port is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--version-policy", "newest"],
        ["--version-policy", "=all"],
        ["--version-policy", "digits=latest:x"],
        ["--version-policy", "specific:"],
        ["--no-management", "--management-port", "9000"],
    ],
)
def test_bad_flags_exit_2_with_a_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", "--store", "s", *argv])
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


def _command_of(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> tuple[list[str], Any]:
    """The command serve_in_subprocess runs for ARGS, and the ServerProcess it yields."""
    seen: list[list[str]] = []

    class FakePopen:
        returncode = None

        def __init__(self, command: list[str], **kwargs: Any) -> None:
            seen.append(command)

        def poll(self) -> None:
            return None

        def terminate(self) -> None: ...

        def wait(self, timeout: float | None = None) -> int:
            return 0

    class Ready:
        status_code = 200

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setattr(process.httpx, "get", lambda *a, **k: Ready())
    with process.serve_in_subprocess(args) as server:
        return seen[0], server


def test_test_servers_get_a_free_management_port(monkeypatch: pytest.MonkeyPatch) -> None:
    command, server = _command_of(monkeypatch, ["--store", "s"])
    port = int(command[command.index("--management-port") + 1])
    assert server.management_port == port and port not in (server.port, server.grpc_port)
    assert server.management_url == f"http://127.0.0.1:{port}"

    command, server = _command_of(monkeypatch, ["--store", "s", "--management-port", "9123"])
    assert command.count("--management-port") == 1 and server.management_port == 9123

    command, server = _command_of(monkeypatch, ["--store", "s", "--no-management"])
    assert "--management-port" not in command and server.management_port is None
    with pytest.raises(AssertionError, match="without a management API"):
        _ = server.management_url


def test_remote_source_flags() -> None:
    default = settings_of()
    assert default.allowed_urls == [] and default.allowed_url_networks == []
    assert default.max_download_bytes == 2 * 1024**3 and default.download_timeout_s == 300
    assert default.url_ca_bundle is None
    settings = settings_of(
        "--allowed-urls", r"https://models\.example\.com/.*",
        "--allowed-urls", r"https://cdn\.example\.com/m/.*\.mar",
        "--allow-url-network", "10.0.0.0/8",
        "--max-download-size", "500MiB",
        "--download-timeout", "60",
        "--url-ca-bundle", "ca.pem",
    )  # fmt: skip
    assert settings.allowed_urls == [
        r"https://models\.example\.com/.*",
        r"https://cdn\.example\.com/m/.*\.mar",
    ]
    assert settings.allowed_url_networks == ["10.0.0.0/8"]
    assert settings.max_download_bytes == 500 * 1024**2 and settings.download_timeout_s == 60
    assert settings.url_ca_bundle == Path("ca.pem")


@pytest.mark.parametrize(
    ("flag", "value"), [("--allowed-urls", "https://(x"), ("--allow-url-network", "10.0.0.1/8")]
)
def test_bad_remote_source_flags_are_usage_errors(flag: str, value: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        settings_of(flag, value)
    usage = capsys.readouterr().err
    assert exited.value.code == 2 and flag in usage
    # one rule: the settings refuse the same value with the same reason
    field = {"--allowed-urls": "allowed_urls", "--allow-url-network": "allowed_url_networks"}
    with pytest.raises(ValidationError) as refused:
        ServerSettings(**{field[flag]: [value]})
    reason = refused.value.errors()[0]["msg"].removeprefix(f"Value error, {flag} ")
    assert reason in " ".join(usage.split())


@pytest.mark.parametrize(
    ("content", "says"),
    [(None, "cannot read"), (b"not a certificate\n", "holds no valid PEM CA certificate")],
)
def test_an_unusable_url_ca_bundle_stops_the_start(
    tmp_path: Path, content: bytes | None, says: str
) -> None:
    bundle = tmp_path / "ca.pem"
    if content is not None:
        bundle.write_bytes(content)
    settings = settings_from_args(
        build_parser().parse_args(
            ["serve", "--store", str(tmp_path), "--url-ca-bundle", str(bundle)]
        )
    )
    with pytest.raises(TLSConfigError, match=says) as refused:
        settings.check_sources()  # what serve() and every worker run before anything starts
    assert f"--url-ca-bundle {bundle}" in refused.value.message


def test_memory_budget_flag() -> None:
    assert settings_of().memory_budget_bytes is None  # every version loaded at start
    assert settings_of("--memory-budget", "1.5GiB").memory_budget_bytes == 3 * 2**29
    assert settings_of("--memory-budget", "4096").memory_budget_bytes == 4096
    for bad in ("0", "lots"):
        with pytest.raises(SystemExit):
            settings_of("--memory-budget", bad)


def test_batching_flags() -> None:
    settings = settings_of(
        "--batching", "fixed",
        "--max-latency-ms", "50",
        "--instances", "2",
        "--shed", "never",
        "--batching", "mlp:mode=adaptive,max_latency_ms=20,instances=3",
    )  # fmt: skip
    assert settings.shed == "never"
    assert settings.batching_for("resnet") == {
        "mode": "fixed", "max_latency_ms": 50.0, "instances": 2,
    }  # fmt: skip
    assert settings.batching_for("mlp") == {
        "mode": "adaptive", "max_latency_ms": 20.0, "instances": 3,
    }  # fmt: skip
    assert settings_of().shed == "early" and settings_of().batching_for("m") == {}


@pytest.mark.parametrize(
    "argv",
    [
        ["--batching", "eager"],
        ["--batching", "mlp:mode=greedy"],
        ["--batching", "mlp:instances=0"],
        ["--batching", "mlp:max_latency_ms=0"],
        ["--shed", "sometimes"],
    ],
)
def test_bad_batching_flags_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        settings_of(*argv)
    assert exit_info.value.code == 2
