"""The tunnel option on the Connect pages: a person's own model server behind NAT.

Consent: "My own server, through a secure tunnel" -> the token and the one command to run, shown
once on a no-store page -> the real `byorouter-tunnel` connects -> the page's status endpoint
says online with the models it found -> "Continue" sends the browser to the app with its code.
Manage: the tunnel's status, Rotate token (shown once, the old one still opens new sockets for a
while, running clients stay up) and Revoke (after a confirmation; closes the tunnel now).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import httpx

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from tests.connect.conftest import (
    Pkce,
    RegisteredApp,
    consent,
    exchange,
    form_with_action,
    post_form,
    query_of,
    read_page,
    register_app,
)
from tests.connect.test_connect_flow import manage_session
from tests.tunnel.tunnel_client import TunnelClientProcess

TOKEN = re.compile(r"BYOROUTER_TUNNEL_TOKEN=(\S+) byorouter-tunnel --url (\S+) --upstream")
JSON = {"Accept": "application/json"}


def token_of(html: str) -> str:
    found = TOKEN.search(html)
    assert found is not None, "no command with a token on the page"
    return found.group(1)


async def choose_tunnel(
    browser: httpx.AsyncClient, app: RegisteredApp, pkce: Pkce, **fields: str
) -> httpx.Response:
    """The consent page, with the tunnel option ticked (and `fields`), submitted."""
    form = await consent(browser, app, pkce)
    return await post_form(browser, form, {"selfhosted_tunnel": "on", **fields})


async def selfhosted_of(bus: Bus, app: RegisteredApp, connection_id: str) -> ks.ProviderInfo:
    connection = await bus.request(
        ks.CONNECTION_GET, ks.ConnectionRef(app_id=app.app_id, connection_id=connection_id)
    )
    (selfhosted,) = [p for p in connection.providers if p.provider == "selfhosted"]
    return selfhosted


async def wait_status(
    fetch: Any, state: str, *, models: bool = False, within_s: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        answer: httpx.Response = await fetch()
        assert answer.status_code == 200, answer.text
        status: dict[str, Any] = answer.json()
        if status["state"] == state and (status["models"] or not models):
            return status
        assert time.monotonic() < deadline, f"tunnel not {state} after {within_s}s: {status}"
        await asyncio.sleep(0.2)


async def test_the_consent_page_offers_the_tunnel_option(
    browser: httpx.AsyncClient, app: RegisteredApp
) -> None:
    page = await browser.get(
        f"/authorize?client_id={app.client_id}&redirect_uri={app.redirect_uris[0]}"
        f"&state=s&code_challenge={Pkce.new().challenge}&code_challenge_method=S256"
    )
    assert '<label for="selfhosted_tunnel">My own server, through a secure tunnel</label>' in (
        page.text
    )
    box = next(
        c
        for c in form_with_action(page.text, "/authorize").controls
        if c.get("name") == "selfhosted_tunnel"
    )
    assert box["type"] == "checkbox"


async def test_the_tunnel_option_shows_the_token_once_with_the_command_then_continues_to_the_app(
    browser: httpx.AsyncClient,
    api: httpx.AsyncClient,
    stack: Stack,
    bus: Bus,
    app: RegisteredApp,
    tmp_path: Path,
) -> None:
    pkce = Pkce.new()
    page = await choose_tunnel(browser, app, pkce)

    # The answer to the POST is the page itself: the token exists nowhere else to redirect to.
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    assert "location" not in page.headers
    token = token_of(page.text)
    assert token.startswith("byo_tun_")
    assert (
        f"BYOROUTER_TUNNEL_TOKEN={token} byorouter-tunnel --url {stack.tunnel_ws_url} "
        '--upstream <span id="tunnel-command-upstream">http://127.0.0.1:11434/v1</span>'
    ) in page.text
    assert "This is the only time this token is shown" in page.text
    # Where to install the client from: this deployment's own tunnel service.
    client_page = stack.tunnel_url + "/client"
    assert f'href="{client_page}"' in page.text
    assert httpx.get(client_page).status_code == 200
    for server in ("vLLM", "llama.cpp", "LM Studio"):
        assert server in page.text
    # Every form on the page posts its fields in the body; no URL carries the token or code.
    for form in read_page(page.text).forms:
        assert form.method == "post"
        assert token not in form.action
        assert token not in form.fields.values()
    assert "Continue before" in page.text

    # The status the page's script polls: offline until the client runs, then online + models.
    status_form = form_with_action(page.text, "/authorize/tunnel/status")

    async def fetch() -> httpx.Response:
        return await post_form(browser, status_form, {}, **JSON)

    offline = await fetch()
    assert offline.json()["state"] == "offline"
    assert offline.headers["cache-control"] == "no-store"
    client = TunnelClientProcess(stack, token, tmp_path)
    try:
        online = await wait_status(fetch, "online", models=True)
        assert online["clients"] == 1
        assert "gpt-4o-mini" in online["models"]
        assert online["summary"].startswith("Online: 1 client connected")

        # Without JavaScript, "Check status" shows the same page again, never the token.
        checked = await post_form(browser, status_form, {})
        assert checked.status_code == 200
        assert token not in checked.text
        assert "Online: 1 client connected" in checked.text
        assert "gpt-4o-mini" in checked.text

        back = form_with_action(checked.text, "/authorize/continue")
        redirected = await post_form(browser, back, {})
        assert redirected.status_code == 303
        location = redirected.headers["location"]
        assert location.startswith(app.redirect_uris[0] + "?")
        assert query_of(location)["state"] == ["st-123"]
        code = query_of(location)["code"][0]
        exchanged = await exchange(api, app, code, pkce.verifier)
        assert exchanged.status_code == 200, exchanged.text
        selfhosted = await selfhosted_of(bus, app, exchanged.json()["connection_id"])
        assert selfhosted.tunnel_id == status_form.fields["tunnel_id"]
    finally:
        client.stop()

    stack.flush_logs()
    for log_file in stack.log_files():
        assert token not in log_file.read_text(errors="replace"), log_file.name


async def test_a_direct_url_and_a_server_key_go_with_the_tunnel(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, bus: Bus, stack: Stack, app: RegisteredApp
) -> None:
    pkce = Pkce.new()
    page = await choose_tunnel(
        browser,
        app,
        pkce,
        selfhosted_base_url=stack.upstream_base_url,
        selfhosted_api_key="server-key-1234567890",
    )
    assert page.status_code == 200, page.text
    assert "server-key-1234567890" not in page.text
    redirected = await post_form(browser, form_with_action(page.text, "/authorize/continue"), {})
    code = query_of(redirected.headers["location"])["code"][0]
    exchanged = await exchange(api, app, code, pkce.verifier)
    selfhosted = await selfhosted_of(bus, app, exchanged.json()["connection_id"])
    assert selfhosted.base_url == stack.upstream_base_url
    assert selfhosted.tunnel_id is not None
    assert selfhosted.tunnel_id.startswith("tun_")
    assert selfhosted.label
    assert "server-key-1234567890" not in selfhosted.label


async def test_a_consent_page_cannot_read_another_apps_tunnel(
    browser: httpx.AsyncClient, bus: Bus, app: RegisteredApp
) -> None:
    page = await choose_tunnel(browser, app, Pkce.new())
    mine = form_with_action(page.text, "/authorize/tunnel/status")
    other = await register_app(bus, name="Someone Else")
    other_page = await choose_tunnel(browser, other, Pkce.new())
    theirs = form_with_action(other_page.text, "/authorize/tunnel/status")
    # Another app's consent form asking for this app's tunnel: not found, as if it did not exist.
    asked = await post_form(browser, theirs, {"tunnel_id": mine.fields["tunnel_id"]}, **JSON)
    assert asked.status_code == 404
    assert "state" not in asked.json()
    # And without the page's CSRF token, nothing at all.
    forged = await post_form(browser, mine, {"csrf_token": "x" * 43}, **JSON)
    assert forged.status_code == 403


async def test_manage_sets_up_rotates_and_revokes_a_tunnel(
    browser: httpx.AsyncClient,
    api: httpx.AsyncClient,
    stack: Stack,
    app: RegisteredApp,
    tmp_path: Path,
) -> None:
    # A connection made with an OpenAI key only; the person adds their server later.
    pkce = Pkce.new()
    form = await consent(browser, app, pkce)
    answer = await post_form(
        browser,
        form,
        {"openai_api_key": "sk-test-abcdefabcdef1234", "openai_base_url": stack.upstream_base_url},
    )
    code = query_of(answer.headers["location"])["code"][0]
    connection_id = (await exchange(api, app, code, pkce.verifier)).json()["connection_id"]
    page = await manage_session(browser, api, app, connection_id)
    assert "Your own server, through a secure tunnel" in page.text

    set_up = await post_form(browser, form_with_action(page.text, "/manage/tunnel"), {})
    assert set_up.status_code == 200, set_up.text
    assert set_up.headers["cache-control"] == "no-store"
    token = token_of(set_up.text)

    async def fetch() -> httpx.Response:
        return await browser.get("/manage/tunnel/status", headers=JSON)

    client = TunnelClientProcess(stack, token, tmp_path)
    try:
        await wait_status(fetch, "online", models=True)
        page = await browser.get("/manage")
        assert "Online: 1 client connected" in page.text
        assert "through a secure tunnel" in page.text
        assert token not in page.text

        rotated = await post_form(browser, form_with_action(page.text, "/manage/tunnel/rotate"), {})
        assert rotated.status_code == 200, rotated.text
        assert rotated.headers["cache-control"] == "no-store"
        new_token = token_of(rotated.text)
        assert new_token != token
        assert "keeps working for new connections for 5 minutes" in rotated.text
        assert "clients already running are not cut" in rotated.text
        # The running client was not cut by the rotation.
        still = await fetch()
        assert still.json()["state"] == "online"

        confirm = await browser.get("/manage/tunnel/revoke")
        assert confirm.status_code == 200
        revoke_form = form_with_action(confirm.text, "/manage/tunnel/revoke")
        assert revoke_form.button("Yes, revoke the tunnel")
        assert 'href="/manage">Keep the tunnel' in confirm.text
        revoked = await post_form(browser, revoke_form, {})
        assert revoked.status_code == 303
        assert revoked.headers["location"] == "/manage?done=tunnel_revoked"
        gone = await fetch()
        assert gone.json()["state"] == "revoked"
        # The tunnel service closed the client's socket; it exits on a revoked tunnel.
        await asyncio.to_thread(client.wait_exit, 20)
        page = await browser.get("/manage?done=tunnel_revoked")
        assert "Tunnel revoked" in page.text
        assert form_with_action(page.text, "/manage/tunnel").button("Set up a secure tunnel")
    finally:
        client.stop()


async def test_tunnel_forms_on_manage_need_the_sessions_csrf_token(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    pkce = Pkce.new()
    form = await consent(browser, app, pkce)
    answer = await post_form(
        browser,
        form,
        {"openai_api_key": "sk-test-abcdefabcdef1234", "openai_base_url": stack.upstream_base_url},
    )
    code = query_of(answer.headers["location"])["code"][0]
    connection_id = (await exchange(api, app, code, pkce.verifier)).json()["connection_id"]
    page = await manage_session(browser, api, app, connection_id)
    set_up = form_with_action(page.text, "/manage/tunnel")
    for action in ("/manage/tunnel", "/manage/tunnel/rotate", "/manage/tunnel/revoke"):
        refused = await post_form(browser, set_up, {"csrf_token": "wrong"}, action=action)
        assert refused.status_code == 403, action
