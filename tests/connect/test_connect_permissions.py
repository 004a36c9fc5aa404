"""The Connect flow on a bus with authorization on, as `make run` starts it: every service has only
the permissions `nats_permissions` gives it, and the whole flow still works without a violation.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus, connect
from tests.conftest import create_database, drop_database
from tests.connect.conftest import (
    Pkce,
    connect_keys,
    exchange,
    form_with_action,
    openai_fields,
    post_form,
    register_app,
)


@pytest.fixture(scope="module")
def secured_stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("connect-secured") / ".byorouter"
    owned_database = create_database(database_url, "connect_secured")
    running = Stack(
        state_dir,
        database_url=owned_database,  # no nats_url: its own NATS, with users and permissions
        env_overrides={"BYOROUTER_LOG_FORMAT": "text"},
    ).start()
    try:
        yield running
    finally:
        running.stop()
        drop_database(database_url, owned_database)


@pytest.fixture
async def admin_bus(secured_stack: Stack) -> AsyncIterator[Bus]:
    nc = await connect(secured_stack.nats_settings(), "connect-permission-tests")
    yield Bus(nc)
    await nc.close()


async def test_the_whole_flow_works_with_least_privilege_on_the_bus(
    secured_stack: Stack, admin_bus: Bus
) -> None:
    stack = secured_stack
    app = await register_app(admin_bus)
    pkce = Pkce.new()
    async with (
        httpx.AsyncClient(base_url=stack.connect_url, timeout=30) as browser,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as api,
    ):
        key = "sk-test-" + secrets.token_hex(16)
        code = await connect_keys(browser, app, pkce, openai_fields(stack, key))
        token = await exchange(api, app, code, pkce.verifier)
        assert token.status_code == 200, token.text
        connection_id = token.json()["connection_id"]

        link = await api.post(
            "/v1/connect/sessions", json={"connection_id": connection_id}, headers=app.auth
        )
        await browser.get(httpx.URL(link.json()["url"]).raw_path.decode())
        page = await browser.get("/manage")
        replace = form_with_action(page.text, "/manage/providers")
        tested = await post_form(
            browser,
            replace,
            {"api_key": key, "base_url": stack.upstream_base_url},
            action="/manage/test",
            Accept="application/json",
        )
        assert tested.json()["ok"] is True, tested.text
        replaced = await post_form(
            browser, replace, {"api_key": key, "base_url": stack.upstream_base_url}
        )
        assert replaced.status_code == 303
        confirm = await browser.get("/manage/disconnect")
        await post_form(browser, form_with_action(confirm.text, "/manage/disconnect"), {})
        gone = await api.get(f"/v1/connections/{connection_id}", headers=app.auth)
        assert gone.status_code == 404

    stack.flush_logs()
    for log_file in stack.log_files():
        text = log_file.read_text(errors="replace").lower()
        assert "permissions violation" not in text, log_file.name
