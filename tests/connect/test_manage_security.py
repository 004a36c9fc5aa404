"""Manage links and sessions: single-use, short-lived links spent only on a confirming POST, a
clean URL, cookies, CSRF, owners."""

from __future__ import annotations

import hashlib
import secrets

import httpx

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from byorouter_connect.manage import disconnected_return_url
from tests.connect.conftest import (
    RegisteredApp,
    confirm_manage_link,
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
    opened = await confirm_manage_link(browser, start_path(link))

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
    asking = await browser.get(path)
    confirm = form_with_action(asking.text, "/manage/start")
    assert (await post_form(browser, confirm, {})).status_code == 303

    browser.cookies.delete("byo_manage")
    confirmed_again = await post_form(browser, confirm, {})
    opened_again = await browser.get(path)

    for again in (confirmed_again, opened_again):
        assert again.status_code == 400
        assert "This link has expired or was already used" in again.text
        assert "byo_manage" not in again.headers.get("set-cookie", "")
    assert (await browser.get("/manage")).status_code == 401


def unspent_links(stack: Stack, connection_id: str) -> int:
    with database(stack) as db:
        row = db.execute(
            "SELECT count(*) FROM manage_links WHERE connection_id = %s AND used_at IS NULL",
            (connection_id,),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_opening_a_manage_link_asks_first_and_spends_nothing(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    connection_id, _ = await connected(browser, api, stack, app)
    path = start_path(await manage_link(api, app, connection_id))

    asking = await browser.get(path)

    assert asking.status_code == 200
    assert "byo_manage" not in asking.headers.get("set-cookie", "")
    assert unspent_links(stack, connection_id) == 1
    # It says which app and which connection: its providers and when it was made, no ids.
    assert "Portfolio Tracker" in asking.text
    assert "OpenAI" in asking.text
    assert "connected on" in asking.text
    assert connection_id not in asking.text
    assert app.app_id not in asking.text
    # The token is in the address: never cached, never sent on as a referrer, never framed.
    assert asking.headers["cache-control"] == "no-store"
    assert asking.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in asking.headers["content-security-policy"]
    confirm = form_with_action(asking.text, "/manage/start")
    assert confirm.method == "post"
    assert confirm.button("Manage my keys")

    confirmed = await post_form(browser, confirm, {})

    assert confirmed.status_code == 303
    assert confirmed.headers["location"] == "/manage"
    assert "byo_manage=" in confirmed.headers["set-cookie"]
    assert (await browser.get("/manage")).status_code == 200
    assert unspent_links(stack, connection_id) == 0


async def test_a_link_scanner_opening_a_manage_link_leaves_it_for_the_person(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    connection_id, _ = await connected(browser, api, stack, app)
    path = start_path(await manage_link(api, app, connection_id))
    async with httpx.AsyncClient(base_url=stack.connect_url) as scanner:
        for _ in range(2):
            assert (await scanner.get(path)).status_code == 200
            assert (await scanner.head(path)).status_code in (200, 405)

    confirmed = await confirm_manage_link(browser, path)

    assert confirmed.status_code == 303
    assert (await browser.get("/manage")).status_code == 200


async def test_confirming_a_manage_link_needs_the_pages_csrf_token(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    connection_id, _ = await connected(browser, api, stack, app)
    path = start_path(await manage_link(api, app, connection_id))
    confirm = form_with_action((await browser.get(path)).text, "/manage/start")

    wrong = [await post_form(browser, confirm, {"csrf_token": t}) for t in ("", "A" * 43)]
    # Another site posting the link in the person's browser: its own token, no CSRF cookie.
    async with httpx.AsyncClient(base_url=stack.connect_url) as elsewhere:
        forged = await post_form(elsewhere, confirm, {})

    for refused in (*wrong, forged):
        assert refused.status_code == 403
        assert "This form has expired" in refused.text
        assert "byo_manage" not in refused.headers.get("set-cookie", "")
    assert unspent_links(stack, connection_id) == 1
    assert (await post_form(browser, confirm, {})).status_code == 303


async def test_an_expired_manage_link_is_refused(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    connection_id, _ = await connected(browser, api, stack, app)
    path = start_path(await manage_link(api, app, connection_id))
    confirm = form_with_action((await browser.get(path)).text, "/manage/start")
    with database(stack) as db:
        db.execute(
            "UPDATE manage_links SET expires_at = now() - interval '1 second' "
            "WHERE connection_id = %s",
            (connection_id,),
        )

    for late in (await post_form(browser, confirm, {}), await browser.get(path)):
        assert late.status_code == 400
        assert "This link has expired" in late.text
        assert "byo_manage" not in late.headers.get("set-cookie", "")


async def test_a_manage_link_to_a_connection_disconnected_since_names_nothing(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    connection_id, _ = await connected(browser, api, stack, app)
    path = start_path(await manage_link(api, app, connection_id))
    deleted = await api.delete(f"/v1/connections/{connection_id}", headers=app.auth)
    assert deleted.status_code in (200, 204)

    asking = await browser.get(path)

    assert asking.status_code == 400
    assert "This link has expired" in asking.text
    assert "Portfolio Tracker" not in asking.text


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
    await confirm_manage_link(browser, start_path(await manage_link(api, app, connection_id)))
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
    await confirm_manage_link(browser, start_path(await manage_link(api, app, connection_id)))
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
    await confirm_manage_link(browser, start_path(await manage_link(api, app, connection_id)))
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


def test_the_disconnected_return_link_keeps_the_apps_query_and_fragment() -> None:
    assert (
        disconnected_return_url("https://app.example/settings?tab=ai#keys")
        == "https://app.example/settings?tab=ai&byorouter=disconnected#keys"
    )
    assert disconnected_return_url(None) is None
