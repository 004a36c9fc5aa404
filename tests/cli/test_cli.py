"""The `byorouter` CLI, run as a subprocess against the whole stack, the way an operator uses it."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from byorouter_cli.dev.demo import DemoFacts
from byorouter_cli.dev.ports import free_ports
from byorouter_cli.dev.stack import Stack

# The installed entry point, as an operator runs it (`make install` puts it next to python).
_SCRIPT = Path(sys.executable).with_name("byorouter")
# Well-formed, but no connection has it: an authenticated app gets 404, a refused key 401.
NO_SUCH_CONNECTION = "conn_" + "0" * 24
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "byorouter_cli.main"]


class Run:
    def __init__(self, done: subprocess.CompletedProcess[str]) -> None:
        self.code = done.returncode
        self.stdout = done.stdout
        self.stderr = done.stderr

    @property
    def json(self) -> dict[str, Any]:
        lines = self.stdout.strip().splitlines()
        assert len(lines) == 1, f"expected exactly one JSON line on stdout, got {self.stdout!r}"
        parsed: dict[str, Any] = json.loads(lines[0])
        return parsed


def byorouter(
    *args: str,
    nats_url: str | None,
    stdin: str = "",
    cwd: Path | None = None,
) -> Run:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    if nats_url is not None:
        env["NATS_URL"] = nats_url
    done = subprocess.run(
        [*CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    return Run(done)


def create_app(stack: Stack, name: str = "CLI test app") -> dict[str, Any]:
    run = byorouter(
        "app",
        "create",
        "--name",
        name,
        "--redirect-uri",
        "http://localhost:3000/cb",
        "--json",
        nats_url=stack.nats_url,
    )
    assert run.code == 0, run.stderr
    return run.json


def create_connection(stack: Stack, client_id: str, provider_key: str) -> str:
    run = byorouter(
        "connection",
        "create",
        "--app",
        client_id,
        "--provider",
        "openai",
        "--api-key-stdin",
        "--base-url",
        stack.upstream_base_url,
        "--json",
        nats_url=stack.nats_url,
        stdin=provider_key + "\n",
    )
    assert run.code == 0, run.stderr
    assert provider_key not in run.stdout + run.stderr
    connection_id: str = run.json["connection_id"]
    return connection_id


def chat(stack: Stack, app_api_key: str, connection_id: str) -> httpx.Response:
    return httpx.post(
        stack.gateway_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {app_api_key}", "X-Byorouter-Connection": connection_id},
        json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        timeout=15,
    )


def test_app_create_prints_a_client_id_and_a_working_api_key(stack: Stack) -> None:
    app = create_app(stack)
    assert set(app) == {"app_id", "client_id", "app_api_key", "key_id"}
    assert app["app_api_key"].startswith("byo_sk_")
    # The gateway accepts the key: an unknown connection is a 404, not a 401.
    response = httpx.get(
        f"{stack.gateway_url}/v1/connections/{NO_SUCH_CONNECTION}",
        headers={"Authorization": f"Bearer {app['app_api_key']}"},
    )
    assert response.status_code == 404


def test_app_create_without_json_is_readable_and_shows_the_key_once(stack: Stack) -> None:
    run = byorouter(
        "app",
        "create",
        "--name",
        "Readable",
        "--redirect-uri",
        "http://localhost:3000/cb",
        nats_url=stack.nats_url,
    )
    assert run.code == 0, run.stderr
    assert "client id" in run.stdout
    assert run.stdout.count("byo_sk_") == 1


def test_connection_created_with_key_on_stdin_serves_chat(stack: Stack) -> None:
    app = create_app(stack)
    provider_key = "sk-cli-" + secrets.token_hex(16)
    connection_id = create_connection(stack, app["client_id"], provider_key)
    assert connection_id.startswith("conn_")
    response = chat(stack, app["app_api_key"], connection_id)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


def test_keys_rotate_then_prune_keeps_every_connection_usable(stack: Stack) -> None:
    app = create_app(stack)
    connection_id = create_connection(stack, app["client_id"], "sk-rot-" + secrets.token_hex(16))

    rotated = byorouter("keys", "rotate", "--json", nats_url=stack.nats_url)
    assert rotated.code == 0, rotated.stderr
    assert rotated.json["rewrapped"] >= 1
    new_version = rotated.json["active_version"]

    pruned = byorouter("keys", "prune", "--json", nats_url=stack.nats_url)
    assert pruned.code == 0, pruned.stderr
    assert pruned.json["active_version"] == new_version
    assert new_version - 1 in pruned.json["removed_versions"]

    status = byorouter("keys", "status", "--json", nats_url=stack.nats_url)
    assert status.code == 0, status.stderr
    assert status.json["versions"] == [new_version]

    response = chat(stack, app["app_api_key"], connection_id)
    assert response.status_code == 200, response.text


def test_revoked_app_key_is_refused_by_the_gateway(stack: Stack) -> None:
    app = create_app(stack)
    second = byorouter(
        "app", "key", "create", "--app", app["client_id"], "--json", nats_url=stack.nats_url
    )
    assert second.code == 0, second.stderr
    revoked = byorouter("app", "key", "revoke", app["key_id"], "--json", nats_url=stack.nats_url)
    assert revoked.code == 0, revoked.stderr
    url = f"{stack.gateway_url}/v1/connections/{NO_SUCH_CONNECTION}"
    response = httpx.get(url, headers={"Authorization": f"Bearer {app['app_api_key']}"})
    assert response.status_code == 401
    response = httpx.get(url, headers={"Authorization": f"Bearer {second.json['app_api_key']}"})
    assert response.status_code == 404


def test_unknown_app_exits_1_with_one_line_error_and_json_envelope(stack: Stack) -> None:
    run = byorouter(
        "connection",
        "create",
        "--app",
        "no-such-client",
        "--provider",
        "openai",
        "--api-key-stdin",
        "--json",
        nats_url=stack.nats_url,
        stdin="sk-unused-" + "x" * 20,
    )
    assert run.code == 1
    assert run.json["error"]["status"] == 404
    assert len(run.stderr.strip().splitlines()) == 1
    assert "sk-unused" not in run.stdout + run.stderr


def test_a_provider_key_is_never_taken_from_the_command_line(stack: Stack) -> None:
    run = byorouter(
        "connection",
        "create",
        "--app",
        "any",
        "--provider",
        "openai",
        "--json",
        nats_url=stack.nats_url,
    )
    assert run.code == 1
    assert run.json["error"]["code"] == "usage_error"
    assert "--api-key-stdin" in run.json["error"]["message"]


def test_usage_mistakes_exit_1_with_one_line_on_stderr(stack: Stack) -> None:
    run = byorouter("app", "create", "--json", nats_url=stack.nats_url)
    assert run.code == 1
    assert run.json["error"]["code"] == "usage_error"
    assert len(run.stderr.strip().splitlines()) == 1


def test_cli_finds_nats_from_dev_json_without_nats_url(stack: Stack) -> None:
    assert stack.state_dir.name == ".byorouter"
    run = byorouter("keys", "status", "--json", nats_url=None, cwd=stack.state_dir.parent)
    assert run.code == 0, run.stderr
    assert run.json["active_version"] >= 1


def test_unreachable_nats_fails_fast_with_service_unavailable(tmp_path: Path) -> None:
    (nowhere,) = free_ports(1)
    run = byorouter(
        "keys", "status", "--json", nats_url=f"nats://127.0.0.1:{nowhere}", cwd=tmp_path
    )
    assert run.code == 1
    assert run.json["error"]["status"] == 503
    assert run.stderr.startswith("error: ")
    assert len(run.stderr.strip().splitlines()) == 1


def test_demo_app_from_the_stack_answers_chat(stack: Stack, demo: DemoFacts) -> None:
    saved = json.loads((stack.state_dir / "demo.json").read_text())
    assert saved == demo
    assert (stack.state_dir / "demo.json").stat().st_mode & 0o077 == 0
    response = chat(stack, demo["app_api_key"], demo["connection_id"])
    assert response.status_code == 200, response.text
    # Asking again reuses the app that still works instead of piling up demo apps.
    assert stack.create_demo()["client_id"] == demo["client_id"]
