"""`byorouter app set-default` / `clear-default`, run as a subprocess against the whole stack."""

from __future__ import annotations

import secrets

import httpx

from byorouter_cli.dev.stack import Stack
from tests.cli.test_cli import byorouter, create_app, create_connection


def chat_default(stack: Stack, app_api_key: str, connection_id: str) -> httpx.Response:
    return httpx.post(
        stack.gateway_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {app_api_key}", "X-Byorouter-Connection": connection_id},
        json={"model": "default", "messages": [{"role": "user", "content": "hi"}]},
        timeout=15,
    )


def set_default(stack: Stack, client_id: str, app_key: str) -> dict[str, object]:
    run = byorouter(
        "app",
        "set-default",
        "--app",
        client_id,
        "--provider",
        "openai",
        "--api-key-stdin",
        "--base-url",
        stack.upstream_base_url,
        "--model",
        "gpt-4o-mini",
        "--json",
        nats_url=stack.nats_url,
        stdin=app_key + "\n",
    )
    assert run.code == 0, run.stderr
    assert app_key not in run.stdout + run.stderr
    return run.json


def test_set_default_with_the_key_on_stdin_then_default_serves_chat(stack: Stack) -> None:
    app = create_app(stack)
    connection_id = create_connection(stack, app["client_id"], "sk-user-" + secrets.token_hex(16))
    app_key = "sk-app-" + secrets.token_hex(16)

    shown = set_default(stack, app["client_id"], app_key)

    assert shown["client_id"] == app["client_id"]
    assert shown["provider"] == "openai"
    assert isinstance(shown["label"], str)
    assert shown["label"].endswith(app_key[-4:])
    response = chat_default(stack, app["app_api_key"], connection_id)
    assert response.status_code == 200, response.text
    assert response.headers["x-byorouter-provider"] == "default"
    assert response.json()["choices"][0]["message"]["content"]


def test_clear_default_stops_default_serving(stack: Stack) -> None:
    app = create_app(stack)
    connection_id = create_connection(stack, app["client_id"], "sk-user-" + secrets.token_hex(16))
    set_default(stack, app["client_id"], "sk-app-" + secrets.token_hex(16))

    cleared = byorouter(
        "app", "clear-default", "--app", app["client_id"], "--json", nats_url=stack.nats_url
    )

    assert cleared.code == 0, cleared.stderr
    assert cleared.json == {"client_id": app["client_id"], "cleared": True}
    response = chat_default(stack, app["app_api_key"], connection_id)
    assert response.status_code == 404


def test_set_default_never_takes_the_key_from_the_command_line(stack: Stack) -> None:
    app = create_app(stack)
    run = byorouter(
        "app",
        "set-default",
        "--app",
        app["client_id"],
        "--provider",
        "openai",
        "--api-key",
        "sk-on-argv-0123456789",
        "--json",
        nats_url=stack.nats_url,
    )
    assert run.code != 0
    assert "sk-on-argv" not in run.stdout


def test_set_default_for_openai_without_a_key_exits_1(stack: Stack) -> None:
    app = create_app(stack)
    run = byorouter(
        "app",
        "set-default",
        "--app",
        app["client_id"],
        "--provider",
        "openai",
        "--json",
        nats_url=stack.nats_url,
    )
    assert run.code == 1
    assert "api key" in run.json["error"]["message"].lower()
