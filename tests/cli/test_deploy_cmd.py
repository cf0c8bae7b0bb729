"""``torchferry deploy`` and ``torchferry rollout`` against a real HTTP server running the
management app over an in-memory fleet: what they call, what they print, their exit codes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fake_fleet_loader import fake_fleet_module

from torchferry.cli import main
from torchferry.serving.process import free_ports, serve_in_thread
from torchferry.serving.settings import ServerSettings

fake = fake_fleet_module()
FAST = ["--interval", "0.05", "--min-requests", "1", "--poll-interval", "0.02"]


@contextmanager
def management(fleet: object, settings: ServerSettings) -> Iterator[str]:
    from torchferry.serving.management.app import management_app

    (port,) = free_ports(1)
    with serve_in_thread(management_app(fleet, settings), port):  # type: ignore[arg-type]
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    return fake.write_archive(tmp_path / "exports" / "digits-v2", "digits")  # type: ignore[no-any-return]


@pytest.fixture
def settings(tmp_path: Path, exported: Path) -> ServerSettings:
    return ServerSettings(store=tmp_path / "store", model_source_roots=[exported.parent])


def test_deploy_without_rollout_registers_and_sets_default(
    settings: ServerSettings, exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = fake.FakeFleet(loaded={"digits": [1]})
    with management(fleet, settings) as url:
        code = main(["deploy", str(exported), "--url", url, "--name", "digits"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert fleet.staged == [(exported.resolve(), "digits")]
    assert fleet.effective_default("digits") == 2
    assert "registered digits version 2" in out and "deployed" in out


def test_deploy_with_a_rollout_that_promotes(
    settings: ServerSettings, exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = fake.FakeFleet(loaded={"digits": [1]})
    with management(fleet, settings) as url:
        argv = ["deploy", str(exported), "--url", url, "--name", "digits", "--rollout", "50,100"]
        code = main([*argv, *FAST, "--max-error-rate", "0.05", "--max-p99-ms", "250"])
        status = fleet.rollouts.status("digits")
    out = capsys.readouterr().out
    assert code == 0, out
    assert status.phase == "promoted" and status.spec.steps == [50, 100]
    assert status.spec.max_error_rate == 0.05 and status.spec.max_p99_ms == 250
    assert "advance step 1/2 at 50%" in out and "promote step 2/2 at 100%" in out
    assert "promoted version 2" in out
    assert fleet.effective_default("digits") == 2


def test_deploy_with_a_rollout_that_rolls_back_exits_3(
    settings: ServerSettings, exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = fake.FakeFleet(loaded={"digits": [1]})
    fleet.rollouts.outcome = "rollback"
    with management(fleet, settings) as url:
        argv = ["deploy", str(exported), "--url", url, "--name", "digits", "--rollout", "10,50,100"]
        code = main([*argv, *FAST])
    out = capsys.readouterr().out
    assert code == 3, out
    assert "rolled back" in out and "canary error rate 0.25 > 0.01" in out
    assert "traffic is back on version 1" in out
    assert fleet.effective_default("digits") == 1


def test_the_first_version_needs_no_rollout(
    settings: ServerSettings, exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = fake.FakeFleet()
    with management(fleet, settings) as url:
        argv = ["deploy", str(exported), "--url", url, "--name", "digits", "--rollout", "50,100"]
        code = main([*argv, *FAST])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "no rollout needed" in out and fleet.rollouts.status("digits") is None
    assert fleet.effective_default("digits") == 1


def test_a_refused_register_exits_1_with_the_servers_message(
    settings: ServerSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = fake.write_archive(tmp_path / "elsewhere" / "digits", "digits")
    fleet = fake.FakeFleet(loaded={"digits": [1]})
    with management(fleet, settings) as url:
        code = main(["deploy", str(outside), "--url", url, "--name", "digits"])
    out = capsys.readouterr().out
    assert code == 1
    assert "403" in out and "outside the model source roots" in out
    assert fleet.staged == []


def test_a_failing_load_exits_1_with_the_reason(
    settings: ServerSettings, exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = fake.FakeFleet(loaded={"digits": [1]})
    fleet.failing[("digits", 2)] = "integrity check failed: model.onnx hash differs"
    with management(fleet, settings) as url:
        code = main(["deploy", str(exported), "--url", url, "--name", "digits"])
    assert code == 1
    assert "integrity check failed: model.onnx hash differs" in capsys.readouterr().out
    assert fleet.effective_default("digits") == 1


def test_an_unreachable_server_exits_1(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)
    code = main(["deploy", str(exported), "--url", f"http://127.0.0.1:{port}", "--name", "d"])
    assert code == 1
    assert "cannot reach" in capsys.readouterr().out


def test_a_rollout_past_its_timeout_is_aborted_and_exits_3(
    settings: ServerSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = fake.FakeFleet(loaded={"digits": [1, 2]})
    fleet.state.models["digits"].routes.default = 1
    fleet.rollouts.outcome = "hang"
    with management(fleet, settings) as url:
        code = main(["rollout", url, "digits", "--to", "2", *FAST, "--timeout", "0.3"])
        status = fleet.rollouts.status("digits")
    out = capsys.readouterr().out
    assert code == 3, out
    assert "timed out" in out and status.phase == "aborted"
    assert fleet.effective_default("digits") == 1


def test_rollout_command_follows_to_promotion(
    settings: ServerSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = fake.FakeFleet(loaded={"digits": [1, 2]})
    fleet.state.models["digits"].routes.default = 1
    with management(fleet, settings) as url:
        code = main(["rollout", url, "digits", "--to", "2", "--steps", "25,100", *FAST])
    assert code == 0
    assert "promoted version 2" in capsys.readouterr().out


def test_rollout_no_wait_and_refusals(
    settings: ServerSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = fake.FakeFleet(loaded={"digits": [1, 2]})
    fleet.state.models["digits"].routes.default = 1
    fleet.rollouts.outcome = "hang"
    with management(fleet, settings) as url:
        assert main(["rollout", url, "digits", "--to", "7"]) == 1
        assert "409: load version 7 of model digits first" in capsys.readouterr().out
        # steps the server would refuse are refused before any call (nothing registered)
        with pytest.raises(SystemExit) as refused:
            main(["rollout", url, "digits", "--to", "2", "--steps", "10,50"])
        assert refused.value.code == 2 and "ending at 100" in capsys.readouterr().err
        assert main(["rollout", url, "digits", "--to", "2", "--no-wait"]) == 0
        assert "rollout of digits version 2 started" in capsys.readouterr().out
        assert fleet.rollouts.status("digits").phase == "stepping"
        # a second one is refused while the first runs
        assert main(["rollout", url, "digits", "--to", "2", "--no-wait"]) == 1
        assert "already has a rollout running" in capsys.readouterr().out
        # nothing may run on once the server stops
        assert httpx.post(f"{url}/models/digits/rollout/abort").status_code == 200


def test_bad_steps_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["rollout", "http://x", "digits", "--to", "2", "--steps", "ten"])
    assert exited.value.code == 2
    assert "10,25,50,100" in capsys.readouterr().err
