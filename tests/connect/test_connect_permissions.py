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
    confirm_manage_link,
    connect_keys,
    exchange,
    form_with_action,
    openai_fields,
    post_form,
    query_of,
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
        await confirm_manage_link(browser, link.json()["url"])
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


async def test_the_tunnel_option_works_with_least_privilege_on_the_bus(
    secured_stack: Stack, admin_bus: Bus
) -> None:
    """Connect registers, reads, rotates and revokes a tunnel and asks its `.status` as the
    `connect` user (needs TUNNEL_REGISTER/GET/ROTATE/REVOKE and `byorouter.tunnel.*.status`)."""
    stack = secured_stack
    app = await register_app(admin_bus)
    pkce = Pkce.new()
    async with (
        httpx.AsyncClient(base_url=stack.connect_url, timeout=30) as browser,
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as api,
    ):
        page = await browser.get(
            f"/authorize?client_id={app.client_id}&redirect_uri={app.redirect_uris[0]}"
            f"&code_challenge={pkce.challenge}&code_challenge_method=S256"
        )
        setup = await post_form(
            browser, form_with_action(page.text, "/authorize"), {"selfhosted_tunnel": "on"}
        )
        assert setup.status_code == 200, setup.text
        assert "BYOROUTER_TUNNEL_TOKEN=byo_tun_" in setup.text
        status_form = form_with_action(setup.text, "/authorize/tunnel/status")
        status = await post_form(browser, status_form, {}, Accept="application/json")
        assert status.json()["state"] == "offline", status.text
        back = await post_form(browser, form_with_action(setup.text, "/authorize/continue"), {})
        code = query_of(back.headers["location"])["code"][0]
        token = await exchange(api, app, code, pkce.verifier)
        connection_id = token.json()["connection_id"]

        link = await api.post(
            "/v1/connect/sessions", json={"connection_id": connection_id}, headers=app.auth
        )
        await confirm_manage_link(browser, link.json()["url"])
        manage = await browser.get("/manage")
        rotated = await post_form(
            browser, form_with_action(manage.text, "/manage/tunnel/rotate"), {}
        )
        assert rotated.status_code == 200, rotated.text
        confirm = await browser.get("/manage/tunnel/revoke")
        revoked = await post_form(
            browser, form_with_action(confirm.text, "/manage/tunnel/revoke"), {}
        )
        assert revoked.status_code == 303
        gone = await browser.get("/manage/tunnel/status", headers={"Accept": "application/json"})
        assert gone.json()["state"] == "revoked"

    stack.flush_logs()
    for log_file in stack.log_files():
        text = log_file.read_text(errors="replace").lower()
        assert "permissions violation" not in text, log_file.name
