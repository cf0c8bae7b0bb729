"""``torchferry token create|list|revoke`` through ``torchferry.cli.main``, ``serve --auth``
without a key file, and ``torchferry rollout --token`` against a guarded management API."""

from __future__ import annotations

import re
import stat
from datetime import timedelta

import pytest
from fake_fleet_loader import fake_fleet_module

from torchferry.cli import build_parser, main
from torchferry.cli.token_cmd import parse_rate, parse_ttl
from torchferry.serving.auth.keyfile import create_token, read_key_file
from torchferry.serving.auth.keyring import KeyRing
from torchferry.serving.process import free_ports, serve_in_thread
from torchferry.serving.settings import ServerSettings

TOKEN = re.compile(r"^tf_[0-9a-f]{12}_[A-Za-z0-9_\-]{43}$", re.MULTILINE)


def test_create_prints_the_token_once_and_list_and_revoke_manage_the_rest(tmp_path, capsys):
    store = tmp_path / "store"
    argv = ["token", "create", "--store", str(store), "--scope", "infer:digits", "--ttl", "24h"]
    assert main([*argv, "--name", "ci", "--rate", "5/s", "--burst", "10"]) == 0
    out = capsys.readouterr().out
    (token,) = TOKEN.findall(out)
    key_file = store / ".torchferry" / "keys.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and token not in key_file.read_text()
    (entry,) = read_key_file(key_file).values()
    assert entry.scopes == ("infer:digits",) and entry.name == "ci"
    assert entry.rate is not None and (entry.rate.per_second, entry.rate.burst) == (5.0, 10)
    assert entry.expires is not None and entry.expires - entry.created == timedelta(hours=24)
    assert main(["token", "create", "--key-file", str(key_file), "--scope", "metrics",
                 "--scope", "metadata", "--ttl", "never"]) == 0  # fmt: skip
    capsys.readouterr()

    assert main(["token", "list", "--store", str(store)]) == 0
    listing = capsys.readouterr().out
    assert entry.id in listing and "infer:digits" in listing and "never" in listing
    assert "tf_" not in listing  # never a token

    assert main(["token", "revoke", entry.id, "--store", str(store)]) == 0
    assert entry.id not in read_key_file(key_file) and len(read_key_file(key_file)) == 1
    assert main(["token", "revoke", entry.id, "--store", str(store)]) == 1
    assert "no token" in _err(capsys)


@pytest.mark.parametrize(
    "argv",
    [
        ["create", "--key-file", "k.json", "--scope", "admin"],
        ["create", "--key-file", "k.json", "--scope", "infer:a b"],
        ["create", "--key-file", "k.json", "--scope", "infer", "--ttl", "soon"],
        ["create", "--key-file", "k.json", "--scope", "infer", "--rate", "fast"],
        ["create", "--key-file", "k.json"],
        ["list", "--store", "s", "--key-file", "k.json"],
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["token", *argv])
    assert exited.value.code == 2 and "error:" in capsys.readouterr().err


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    """Standard error as one line (the console wraps long messages)."""
    return " ".join(capsys.readouterr().err.split())


def test_mistakes_are_refused_with_the_reason(tmp_path, capsys):
    key_file = tmp_path / "keys.json"
    assert main(["token", "list", "--key-file", str(key_file)]) == 1
    assert "does not exist" in _err(capsys)
    assert main(["token", "create", "--scope", "infer"]) == 1
    assert "--store STORE or --key-file PATH" in _err(capsys)
    argv = ["token", "create", "--key-file", str(key_file), "--scope", "infer", "--burst", "3"]
    assert main(argv) == 1 and "--burst needs --rate" in _err(capsys)
    key_file.write_text("{}")
    assert main(["token", "create", "--key-file", str(key_file), "--scope", "infer"]) == 1
    assert '"version": 1' in _err(capsys) and key_file.read_text() == "{}"


def test_durations_and_rates():
    assert parse_ttl("30m") == timedelta(minutes=30) and parse_ttl("7d") == timedelta(days=7)
    assert parse_ttl("never") is None
    assert parse_rate("10") == 10.0 and parse_rate("600/m") == 10.0


def test_serve_with_auth_and_no_key_file_fails_naming_the_command(tmp_path, capsys):
    store = tmp_path / "store"
    store.mkdir()
    assert main(["serve", "--store", str(store), "--auth"]) == 1
    err = _err(capsys)
    assert "torchferry token create" in err and "keys.json" in err
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "manifest.json").write_text("{}")  # an archive's layout; never read
    argv = ["serve", "--model-name", "m", "--model-dir", str(model_dir), "--auth"]
    assert main(argv) == 1 and "--key-file" in _err(capsys)


def test_rollout_sends_its_token_to_a_guarded_management_api(tmp_path, capsys):
    from torchferry.serving.management.app import management_app

    fake = fake_fleet_module()
    key_file = tmp_path / "keys.json"
    manage = create_token(key_file, ["manage"], None)[1]
    metadata = create_token(key_file, ["metadata"], None)[1]
    fleet = fake.FakeFleet(loaded={"digits": [1, 2]})
    app = management_app(fleet, ServerSettings(store=tmp_path), KeyRing(key_file))
    (port,) = free_ports(1)
    argv = ["rollout", f"http://127.0.0.1:{port}", "digits", "--to", "1", "--no-wait"]
    with serve_in_thread(app, port):
        assert main(argv) == 1
        assert "401" in capsys.readouterr().out
        assert main([*argv, "--token", metadata]) == 1
        assert "403" in capsys.readouterr().out and fleet.rollouts.status("digits") is None
        assert main([*argv, "--token", manage]) == 0
    assert fleet.rollouts.status("digits") is not None
