"""Manage links and sessions: single-use, short-lived links, a clean URL, cookies, CSRF, owners."""

from __future__ import annotations

import hashlib
import secrets

import httpx

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from tests.connect.conftest import (
    RegisteredApp,
    connected,
    form_with_action,
    post_form,
    read_page,
    register_app,
)
from tests.connect.test_code_exchange import database


async def manage_link(
    api: httpx.AsyncClient, app: RegisteredApp, connection_id: str, **extra: str
) -> httpx.Response:
    return await api.post(
        "/v1/connect/sessions", json={"connection_id": connection_id, **extra}, headers=app.auth
    )


def start_path(link: httpx.Response) -> str:
    url = httpx.URL(link.json()["url"])
    assert url.path == "/manage/start"
    return url.raw_path.decode()


async def test_a_manage_link_carries_only_a_long_token_and_opens_a_session_on_a_clean_url(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    connection_id, _ = await connected(browser, api, stack, app)
    link = await manage_link(api, app, connection_id)

    assert link.status_code == 200
    assert link.headers["cache-control"] == "no-store"
    assert "conn_" not in link.json()["url"]
    token = httpx.URL(link.json()["url"]).params["token"]
    assert len(token) >= 43
    opened = await browser.get(start_path(link))

    assert opened.status_code == 303
    assert opened.headers["location"] == "/manage"
    cookie = opened.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie or "SameSite=Lax" in cookie
    assert "Path=/manage" in cookie
    assert "Secure" not in cookie  # plain http on loopback only; anywhere else it is Secure
    with database(stack) as db:
        stored = db.execute(
            "SELECT token_hash FROM manage_links WHERE connection_id = %s", (connection_id,)
        ).fetchall()
    assert [bytes(row[0]) for row in stored] == [hashlib.sha256(token.encode()).digest()]


async def test_a_manage_link_works_once(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    connection_id, _ = await connected(browser, api, stack, app)
    path = start_path(await manage_link(api, app, connection_id))
    assert (await browser.get(path)).status_code == 303

    browser.cookies.clear()
    again = await browser.get(path)

    assert again.status_code == 400
    assert "This link has expired" in again.text
    assert "set-cookie" not in again.headers


async def test_an_expired_manage_link_is_refused(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    connection_id, _ = await connected(browser, api, stack, app)
    link = await manage_link(api, app, connection_id)
    with database(stack) as db:
        db.execute(
            "UPDATE manage_links SET expires_at = now() - interval '1 second' "
            "WHERE connection_id = %s",
            (connection_id,),
        )
    assert (await browser.get(start_path(link))).status_code == 400


async def test_another_apps_connection_gets_no_manage_link(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp, bus: Bus
) -> None:
    connection_id, _ = await connected(browser, api, stack, app)
    other = await register_app(bus, name="Other")

    answer = await manage_link(api, other, connection_id)

    assert answer.status_code == 404


async def test_a_return_url_must_be_on_the_apps_own_origin(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    connection_id, _ = await connected(browser, api, stack, app)
    for bad in ("https://evil.example/", "http://localhost:3001/settings", "javascript:alert(1)"):
        answer = await manage_link(api, app, connection_id, return_url=bad)
        assert answer.status_code == 400, bad
    good = await manage_link(api, app, connection_id, return_url="http://localhost:3000/x")
    assert good.status_code == 200


async def test_the_manage_page_needs_a_live_session(browser: httpx.AsyncClient) -> None:
    assert (await browser.get("/manage")).status_code == 401
    browser.cookies.set("byo_manage", secrets.token_urlsafe(32), path="/manage")
    page = await browser.get("/manage")
    assert page.status_code == 401
    assert "Your session has ended" in page.text


async def test_manage_forms_without_the_sessions_csrf_token_are_refused(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    connection_id, _ = await connected(browser, api, stack, app)
    await browser.get(start_path(await manage_link(api, app, connection_id)))
    page = await browser.get("/manage")
    disconnect = form_with_action(
        (await browser.get("/manage/disconnect")).text, "/manage/disconnect"
    )
    replace = form_with_action(page.text, "/manage/providers")

    for form in (disconnect, replace):
        for token in ("", "A" * 43):
            refused = await post_form(browser, form, {"csrf_token": token, "api_key": "sk-x" * 4})
            assert refused.status_code == 403
    # Nothing happened: the connection is still there.
    assert (await api.get(f"/v1/connections/{connection_id}", headers=app.auth)).status_code == 200


async def test_the_manage_page_shows_masked_labels_and_never_a_key(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    connection_id, key = await connected(browser, api, stack, app)
    await browser.get(start_path(await manage_link(api, app, connection_id)))
    page = await browser.get("/manage")
    replace = form_with_action(page.text, "/manage/providers")
    new_key = "sk-test-" + secrets.token_hex(16)

    tested = await post_form(
        browser,
        replace,
        {"api_key": new_key, "base_url": "ftp://nowhere"},
        action="/manage/test",
    )
    refused = await post_form(browser, replace, {"api_key": new_key, "base_url": "ftp://nowhere"})

    assert f"sk-...{key[-4:]}" in page.text
    for answer in (page, tested, refused):
        assert key not in answer.text
        assert new_key not in answer.text
    assert refused.status_code == 400
    for control in read_page(page.text).forms[0].controls:
        if control.get("name") == "api_key":
            assert control["type"] == "password"
            assert control["autocomplete"] == "off"


async def test_a_disconnected_session_can_change_nothing(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    connection_id, _ = await connected(browser, api, stack, app)
    await browser.get(start_path(await manage_link(api, app, connection_id)))
    page = await browser.get("/manage")
    replace = form_with_action(page.text, "/manage/providers")
    confirm = await browser.get("/manage/disconnect")
    await post_form(browser, form_with_action(confirm.text, "/manage/disconnect"), {})

    late = await post_form(
        browser,
        replace,
        {"api_key": "sk-test-" + secrets.token_hex(8), "base_url": stack.upstream_base_url},
    )

    assert late.status_code == 401
    assert (await browser.get("/manage")).headers["location"] == "/manage/done"
    assert (await manage_link(api, app, connection_id)).status_code == 404
