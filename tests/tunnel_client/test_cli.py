"""The command line: secrets never as arguments, TLS unless the service is this machine, and a
key file made private on first run and reused after."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from byorouter_tunnel_client import cli, e2e
from byorouter_tunnel_client.config import ConfigError, TunnelConfig

BASE = ["--url", "wss://byorouter.example/tunnel", "--upstream", "http://127.0.0.1:11434/v1"]
ENV = {"BYOROUTER_TUNNEL_TOKEN": "tok_from_env"}


def parse(argv: list[str], env: dict[str, str] | None = None, stdin: str = "") -> TunnelConfig:
    config, _ = cli.config_from_args(argv, ENV if env is None else env, io.StringIO(stdin))
    return config


def test_there_is_no_token_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--token " not in cli.build_parser().format_help()
    for argv in (["--token", "tok_secret"], ["--token=tok_secret"], ["--tok", "tok_secret"]):
        with pytest.raises(SystemExit) as exit_:
            parse(BASE + argv)
        assert exit_.value.code == 2
    assert "never an argument" in capsys.readouterr().err


def test_the_installed_command_refuses_a_token_argument() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "byorouter_tunnel_client.cli", *BASE, "--token", "tok_secret"],
        capture_output=True,
        text=True,
        env={**os.environ, "BYOROUTER_TUNNEL_TOKEN": ""},
        timeout=30,
    )
    assert result.returncode == 2
    assert "never an argument" in result.stderr
    assert "tok_secret" not in result.stderr


@pytest.mark.parametrize(
    "url",
    ["ws://byorouter.example/tunnel", "ws://192.168.1.10:8080/tunnel", "http://x/tunnel"],
)
def test_plain_ws_to_another_host_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="wss://"):
        parse(["--url", url, "--upstream", "http://127.0.0.1:11434/v1"])


@pytest.mark.parametrize(
    "url", ["ws://127.0.0.1:9000/tunnel", "ws://localhost:9000/tunnel", "ws://[::1]:9000/t"]
)
def test_plain_ws_to_this_machine_is_allowed_for_development(url: str) -> None:
    assert parse(["--url", url, "--upstream", "http://127.0.0.1:11434/v1"]).url == url


def test_the_command_exits_2_with_a_clear_error_for_plain_ws(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BYOROUTER_TUNNEL_TOKEN", "tok_env")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--url", "ws://byorouter.example/t", "--upstream", "http://127.0.0.1:1/v1"])
    assert exit_.value.code == 2
    assert "Use wss://" in capsys.readouterr().err


def test_token_comes_from_the_environment() -> None:
    assert parse(BASE).token == "tok_from_env"


def test_token_file_wins_over_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("tok_from_file\n")
    path.chmod(0o600)
    assert parse([*BASE, "--token-file", str(path)]).token == "tok_from_file"


def test_token_from_stdin() -> None:
    assert parse([*BASE, "--token-stdin"], env={}, stdin="tok_from_stdin\n").token == (
        "tok_from_stdin"
    )


def test_no_token_anywhere_says_where_to_put_it() -> None:
    with pytest.raises(ConfigError, match="BYOROUTER_TUNNEL_TOKEN"):
        parse(BASE, env={})
    with pytest.raises(ConfigError, match="stdin"):
        parse([*BASE, "--token-stdin"], env={}, stdin="  \n")


def test_the_token_is_not_in_the_config_repr(tmp_path: Path) -> None:
    config = parse(BASE, env={**ENV, "BYOROUTER_UPSTREAM_API_KEY": "sk-local"})
    assert config.upstream_key == "sk-local"
    assert "tok_from_env" not in repr(config)
    assert "sk-local" not in repr(config)


def test_upstream_key_file_wins_over_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "upstream.key"
    path.write_text("sk-file\n")
    env = {**ENV, "BYOROUTER_UPSTREAM_API_KEY": "sk-env"}
    assert parse([*BASE, "--upstream-key-file", str(path)], env=env).upstream_key == "sk-file"
    assert parse(BASE).upstream_key is None


def test_the_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "client.key"
    first = e2e.load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = e2e.load_or_create_private_key(path)
    assert e2e.public_key_text(first.public_key()) == e2e.public_key_text(again.public_key())


def test_the_default_key_file_lives_in_the_users_config_dir() -> None:
    config = parse(BASE)
    assert config.key_file == Path("~/.config/byorouter-tunnel/client.key").expanduser()
