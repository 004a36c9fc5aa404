"""The Connect story end to end: consent, test keys, code exchange, chat, manage, disconnect."""

from __future__ import annotations

import secrets

import httpx
from pydantic import SecretStr

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from tests.connect.conftest import (
    OPENROUTER_MODELS,
    FakeProviders,
    Pkce,
    RegisteredApp,
    authorize_query,
    closed_port_url,
    confirm_manage_link,
    connected,
    consent,
    exchange,
    form_with_action,
    openai_fields,
    post_form,
    query_of,
    read_page,
    register_app,
)


async def chat(api: httpx.AsyncClient, app: RegisteredApp, connection_id: str) -> httpx.Response:
    return await api.post(
        "/v1/chat/completions",
        json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}]},
        headers={**app.auth, "X-Byorouter-Connection": connection_id},
    )


async def manage_session(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, app: RegisteredApp, connection_id: str
) -> httpx.Response:
    """The app asks for a manage link; the browser opens it; returns the /manage page."""
    link = await api.post(
        "/v1/connect/sessions",
        json={"connection_id": connection_id, "return_url": "http://localhost:3000/settings"},
        headers=app.auth,
    )
    assert link.status_code == 200, link.text
    opened = await confirm_manage_link(browser, link.json()["url"])
    assert opened.status_code == 303
    assert opened.headers["location"] == "/manage"
    page = await browser.get("/manage")
    assert page.status_code == 200, page.text
    return page


async def test_a_person_connects_their_key_and_the_app_chats_then_manages_and_disconnects(
    browser: httpx.AsyncClient,
    api: httpx.AsyncClient,
    stack: Stack,
    app: RegisteredApp,
    fake_providers: FakeProviders,
) -> None:
    pkce = Pkce.new()
    page = await browser.get(
        f"/authorize?client_id={app.client_id}&redirect_uri={app.redirect_uris[0]}"
        f"&state=xyz%20123&code_challenge={pkce.challenge}&code_challenge_method=S256"
    )
    assert page.status_code == 200
    assert "Portfolio Tracker" in page.text
    assert "What Portfolio Tracker will be able to do" in page.text
    form = form_with_action(page.text, "/authorize")

    # Test a good key, a key the provider rejects, and a server nobody answers at.
    key = "sk-test-" + secrets.token_hex(16)
    good = await post_form(
        browser,
        form,
        {**openai_fields(stack, key), "test": "openai"},
        action="/authorize/test",
        Accept="application/json",
    )
    assert good.json()["ok"] is True
    assert good.json()["message"] == "Key works — 5 models available"
    rejected = await post_form(
        browser,
        form,
        {
            "openai_api_key": key,
            "openai_base_url": fake_providers.rejecting_openai,
            "test": "openai",
        },
        action="/authorize/test",
        Accept="application/json",
    )
    assert rejected.json() == {
        "ok": False,
        "message": "OpenAI rejected this key (401)",
        "model_count": 0,
        "models": [],
    }
    unreachable_url = closed_port_url()
    unreachable = await post_form(
        browser,
        form,
        {"selfhosted_base_url": unreachable_url, "test": "selfhosted"},
        action="/authorize/test",
        Accept="application/json",
    )
    origin = unreachable_url.removesuffix("/v1")
    assert unreachable.json()["message"] == f"Could not reach {origin} (connection refused)"

    # Connect: the keys go to keystore and the browser goes back to the app with 303.
    answer = await post_form(browser, form, openai_fields(stack, key))
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith(app.redirect_uris[0] + "?")
    returned = query_of(location)
    assert returned["state"] == ["xyz 123"]
    assert "conn_" not in location

    token = await exchange(api, app, returned["code"][0], pkce.verifier)
    assert token.status_code == 200, token.text
    body = token.json()
    connection_id = body["connection_id"]
    assert connection_id.startswith("conn_")
    assert body["providers"][0]["provider"] == "openai"
    assert body["providers"][0]["label"] == f"sk-...{key[-4:]}"
    assert key not in token.text

    reply = await chat(api, app, connection_id)
    assert reply.status_code == 200, reply.text
    assert "hi there" in reply.json()["choices"][0]["message"]["content"]

    # Manage: replace the key; the connection id stays, the label changes.
    manage = await manage_session(browser, api, app, connection_id)
    assert f"sk-...{key[-4:]}" in manage.text
    assert key not in manage.text
    replace = form_with_action(manage.text, "/manage/providers")
    new_key = "sk-test-" + secrets.token_hex(16)
    replaced = await post_form(
        browser, replace, {"api_key": new_key, "base_url": stack.upstream_base_url}
    )
    assert replaced.status_code == 303
    assert replaced.headers["location"] == "/manage?done=key_replaced&provider=openai"
    after = await browser.get(replaced.headers["location"])
    assert "OpenAI: key replaced" in after.text
    info = await api.get(f"/v1/connections/{connection_id}", headers=app.auth)
    assert info.json()["providers"][0]["label"] == f"sk-...{new_key[-4:]}"
    assert (await chat(api, app, connection_id)).status_code == 200

    # Disconnect, after a confirmation step; the gateway refuses the connection at once.
    confirm = await browser.get("/manage/disconnect")
    assert "Yes, disconnect" in confirm.text
    done = await post_form(browser, form_with_action(confirm.text, "/manage/disconnect"), {})
    assert done.status_code == 303
    assert done.headers["location"] == "/manage/done"
    done_page = await browser.get("/manage/done")
    assert "Disconnected" in done_page.text
    # "Return to the app" tells the app what happened, as an authorization error would.
    assert 'href="http://localhost:3000/settings?byorouter=disconnected"' in done_page.text
    assert (await api.get(f"/v1/connections/{connection_id}", headers=app.auth)).status_code == 404
    refused = await chat(api, app, connection_id)
    assert refused.status_code == 404


async def test_testing_an_openrouter_key_fills_the_preferred_model_picker(
    browser: httpx.AsyncClient, app: RegisteredApp, fake_providers: FakeProviders
) -> None:
    form = await consent(browser, app, Pkce.new())
    fields = {
        "openrouter_api_key": "sk-or-" + secrets.token_hex(16),
        "openrouter_base_url": fake_providers.url,
        "openrouter_model": "openai/gpt-4o",
        "test": "openrouter",
    }

    # With JavaScript the page fetches JSON; without, the form posts and the page comes back.
    as_json = await post_form(
        browser, form, fields, action="/authorize/test", Accept="application/json"
    )
    as_page = await post_form(browser, form, fields, action="/authorize/test")

    assert as_json.json()["models"] == sorted(OPENROUTER_MODELS)
    assert as_json.json()["message"] == "Key works — 3 models available"
    page = read_page(as_page.text)
    assert page.datalists["openrouter_models"] == sorted(OPENROUTER_MODELS)
    assert "Key works — 3 models available" in as_page.text
    kept = form_with_action(as_page.text, "/authorize").fields
    assert kept["openrouter_model"] == "openai/gpt-4o"
    assert kept["openrouter_base_url"] == fake_providers.url
    assert kept["openrouter_api_key"] == ""


async def test_a_connection_with_several_providers_keeps_the_chosen_order(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    pkce = Pkce.new()
    form = await consent(browser, app, pkce)
    answer = await post_form(
        browser,
        form,
        {
            **openai_fields(stack, "sk-test-" + secrets.token_hex(8)),
            "openai_priority": "2",
            "selfhosted_base_url": stack.upstream_base_url,
            "selfhosted_model": "llama3",
            "selfhosted_priority": "1",
        },
    )
    token = await exchange(api, app, query_of(answer.headers["location"])["code"][0], pkce.verifier)

    providers = token.json()["providers"]
    assert [p["provider"] for p in providers] == ["selfhosted", "openai"]
    assert providers[0]["preferred_model"] == "llama3"
    assert providers[0]["label"] is None


async def test_manage_changes_order_adds_and_removes_providers_on_the_same_connection(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    connection_id, _ = await connected(browser, api, stack, app)
    page = await manage_session(browser, api, app, connection_id)

    add = next(f for f in read_page(page.text).forms if f.fields.get("form") == "add")
    added = await post_form(
        browser,
        add,
        {"provider": "selfhosted", "base_url": stack.upstream_base_url, "model": "qwen"},
    )
    assert added.headers["location"] == "/manage?done=added&provider=selfhosted"
    page = await browser.get("/manage")
    preferences = form_with_action(page.text, "/manage/preferences")
    saved = await post_form(
        browser, preferences, {"selfhosted_priority": "1", "openai_priority": "2"}
    )
    assert saved.headers["location"] == "/manage?done=preferences"
    info = await api.get(f"/v1/connections/{connection_id}/providers", headers=app.auth)
    assert [p["provider"] for p in info.json()["data"]] == ["selfhosted", "openai"]

    page = await browser.get("/manage")
    remove = next(
        f
        for f in read_page(page.text).forms
        if f.action == "/manage/providers/remove" and f.fields["provider"] == "openai"
    )
    assert remove.button("Remove OpenAI")
    removed = await post_form(browser, remove, {})
    assert removed.headers["location"] == "/manage?done=removed&provider=openai"
    info = await api.get(f"/v1/connections/{connection_id}/providers", headers=app.auth)
    assert [p["provider"] for p in info.json()["data"]] == ["selfhosted"]
    # The last provider cannot be removed: that is what Disconnect is for.
    page = await browser.get("/manage")
    assert not [f for f in read_page(page.text).forms if f.action == "/manage/providers/remove"]


async def test_cancel_sends_the_person_back_with_access_denied_and_the_state(
    browser: httpx.AsyncClient, app: RegisteredApp
) -> None:
    page = await browser.get(
        f"/authorize?client_id={app.client_id}&redirect_uri={app.redirect_uris[0]}"
        f"&state=keep-me&code_challenge={Pkce.new().challenge}&code_challenge_method=S256"
    )
    cancel = form_with_action(page.text, "/authorize/cancel")
    assert cancel.button("Cancel")

    answer = await post_form(browser, cancel, {})

    assert answer.status_code == 303
    returned = query_of(answer.headers["location"])
    assert returned["error"] == ["access_denied"]
    assert returned["state"] == ["keep-me"]
    assert "code" not in returned


async def test_fallback_to_the_apps_ai_is_offered_only_when_the_app_has_one(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, bus: Bus
) -> None:
    plain = await register_app(bus, name="No default")
    with_default = await register_app(bus, name="Has default")
    await bus.request(
        ks.APP_DEFAULT_SET,
        ks.AppDefaultSet(
            client_id=with_default.client_id,
            provider="openai",
            api_key=SecretStr("sk-app-" + secrets.token_hex(8)),
            base_url=stack.upstream_base_url,
        ),
    )

    plain_form = await consent(browser, plain, Pkce.new())
    pkce = Pkce.new()
    form = await consent(browser, with_default, pkce)
    answer = await post_form(
        browser,
        form,
        {**openai_fields(stack, "sk-test-" + secrets.token_hex(8)), "fallback_to_default": "on"},
    )
    code = query_of(answer.headers["location"])["code"][0]
    token = await exchange(api, with_default, code, pkce.verifier)
    connection = await api.get(
        f"/v1/connections/{token.json()['connection_id']}", headers=with_default.auth
    )

    assert "fallback_to_default" not in {c.get("name") for c in plain_form.controls}
    assert "fallback_to_default" in {c.get("name") for c in form.controls}
    assert (
        "Fall back to Has default's AI if mine fail"
        in (await browser.get(authorize_query(with_default, Pkce.new()))).text
    )
    assert connection.json()["fallback_to_default"] is True
