"""Provider policy through the whole stack: the app's policy on the Connect page, in keystore
and in the router; a pushed authorization request (RFC 9126) that narrows it for one person."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlencode

import httpx
import pytest
from pydantic import SecretStr

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from byorouter_common.contracts.keystore import ProviderCredentialInput
from byorouter_common.contracts.keystore import connect_flow as cn
from byorouter_common.contracts.keystore import provider_policy as pp
from byorouter_common.errors import ByoError
from tests.connect.conftest import (
    Pkce,
    RegisteredApp,
    consent,
    exchange,
    form_with_action,
    openai_fields,
    post_form,
    query_of,
)


async def set_policy(bus: Bus, app: RegisteredApp, *kinds: str) -> None:
    await bus.request(
        pp.APP_POLICY_SET,
        pp.AppPolicySet(client_id=app.client_id, allowed_providers=list(kinds) or None),  # type: ignore[arg-type]
    )


def offered(html: str) -> set[str]:
    return {
        kind
        for kind in ("openai", "anthropic", "openrouter", "selfhosted")
        if f'id="provider-{kind}"' in html
    }


async def push(
    api: httpx.AsyncClient, app: RegisteredApp, pkce: Pkce, **extra: str
) -> httpx.Response:
    return await api.post(
        "/v1/oauth/par",
        data={
            "response_type": "code",
            "client_id": app.client_id,
            "redirect_uri": app.redirect_uris[0],
            "state": "pushed-state",
            "code_challenge": pkce.challenge,
            "code_challenge_method": "S256",
            **extra,
        },
        headers=app.auth,
    )


async def chat(
    api: httpx.AsyncClient, app: RegisteredApp, connection: str, model: str
) -> httpx.Response:
    return await api.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={**app.auth, "X-Byorouter-Connection": connection},
    )


async def test_a_kind_the_app_disallows_is_absent_from_the_page_and_refused_when_posted(
    browser: httpx.AsyncClient, bus: Bus, stack: Stack, app: RegisteredApp
) -> None:
    await set_policy(bus, app, "openai", "openrouter")
    html = (await browser.get(f"/authorize?{urlencode(_plain_query(app, Pkce.new()))}")).text
    form = form_with_action(html, "/authorize")
    assert offered(html) == {"openai", "openrouter"}
    assert "selfhosted_tunnel" not in html

    # Posted anyway, as an edited page would: Connect shows keystore's refusal, no code leaves.
    refused = await post_form(
        browser,
        form,
        {"selfhosted_base_url": stack.upstream_base_url, "selfhosted_model": "llama3"},
    )
    assert refused.status_code == 400
    assert "does not let its users connect a self-hosted server" in refused.text
    assert "location" not in refused.headers

    with pytest.raises(ByoError) as raised:
        await bus.request(
            cn.AUTHORIZE,
            cn.AuthorizationGrant(
                client_id=app.client_id,
                redirect_uri=app.redirect_uris[0],
                code_challenge=Pkce.new().challenge,
                providers=[
                    ProviderCredentialInput(provider="anthropic", api_key=SecretStr("sk-ant-x"))
                ],
            ),
        )
    assert raised.value.status == 403
    assert raised.value.code == "provider_not_allowed"


def _plain_query(app: RegisteredApp, pkce: Pkce) -> dict[str, str]:
    return {
        "client_id": app.client_id,
        "redirect_uri": app.redirect_uris[0],
        "response_type": "code",
        "state": "s",
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
    }


async def test_after_the_policy_changes_the_router_refuses_and_falls_back(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, bus: Bus, stack: Stack, app: RegisteredApp
) -> None:
    pkce = Pkce.new()
    form = await consent(browser, app, pkce)
    values = {
        **openai_fields(stack, "sk-test-" + secrets.token_hex(8)),
        "openai_priority": "1",
        "selfhosted_base_url": stack.upstream_base_url,
        "selfhosted_model": "gpt-4o-mini",
        "selfhosted_priority": "2",
    }
    done = await post_form(browser, form, values)
    assert done.status_code == 303, done.text
    token = await exchange(api, app, query_of(done.headers["location"])["code"][0], pkce.verifier)
    connection = token.json()["connection_id"]
    assert (await chat(api, app, connection, "openai/gpt-4o-mini")).status_code == 200

    await set_policy(bus, app, "selfhosted")
    fell_back = await chat_once_policy_applies(
        api, app, connection, lambda r: r.headers.get("x-byorouter-provider") != "openai"
    )
    assert fell_back.status_code == 200, fell_back.text
    assert fell_back.headers["x-byorouter-provider"] == "selfhosted"

    await set_policy(bus, app, "anthropic")
    refused = await chat_once_policy_applies(api, app, connection, lambda r: r.status_code != 200)
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "provider_not_allowed"
    assert error["param"] == "model"
    assert "no longer lets its users use openai" in error["message"]

    await set_policy(bus, app)  # every kind again: the same key works again
    again = await chat_once_policy_applies(api, app, connection, lambda r: r.status_code == 200)
    assert again.status_code == 200


async def chat_once_policy_applies(
    api: httpx.AsyncClient,
    app: RegisteredApp,
    connection: str,
    applied: Callable[[httpx.Response], bool],
    within_s: float = 2.0,
) -> httpx.Response:
    """The first chat answered under the new policy: routers hear of it by an event, so a
    request racing the event may still see the old one (for milliseconds, not seconds)."""
    deadline = time.monotonic() + within_s
    while True:
        answer = await chat(api, app, connection, "openai/gpt-4o-mini")
        if applied(answer) or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.05)


async def test_a_pushed_request_narrows_the_flow_and_the_browser_cannot_widen_it(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    pkce = Pkce.new()
    pushed = await push(api, app, pkce, allowed_providers="openai anthropic")
    assert pushed.status_code == 201, pushed.text
    assert pushed.headers["cache-control"] == "no-store"
    request_uri = pushed.json()["request_uri"]
    assert request_uri.startswith("urn:ietf:params:oauth:request_uri:")

    # Added and changed parameters are ignored: only what the app's server pushed counts.
    edited = {
        "client_id": app.client_id,
        "request_uri": request_uri,
        "allowed_providers": "openai anthropic openrouter selfhosted tunnel",
        "redirect_uri": "http://localhost:3000/elsewhere",
        "code_challenge": Pkce.new().challenge,
        "code_challenge_method": "S256",
        "state": "browser-state",
    }
    page = await browser.get(f"/authorize?{urlencode(edited)}")
    assert page.status_code == 200, page.text
    assert offered(page.text) == {"openai", "anthropic"}
    form = form_with_action(page.text, "/authorize")
    # The page never learns the pushed challenge, redirect URI or state.
    assert set(form.fields) >= {"client_id", "request_uri"}
    assert not {"code_challenge", "redirect_uri", "state_b64"} & set(form.fields)

    # The same request_uri opens once.
    again = await browser.get(f"/authorize?{urlencode(edited)}")
    assert again.status_code == 400
    assert "expired" in again.text

    # Posting a provider the pushed request left out is refused, whatever the form says.
    widened = await post_form(
        browser,
        form,
        {"openrouter_api_key": "sk-or-" + secrets.token_hex(8), "allowed_providers": "openrouter"},
    )
    assert widened.status_code == 400
    assert "does not let its users connect openrouter" in widened.text

    done = await post_form(browser, form, openai_fields(stack, "sk-test-" + secrets.token_hex(8)))
    assert done.status_code == 303, done.text
    location = done.headers["location"]
    assert location.startswith(app.redirect_uris[0] + "?")
    assert query_of(location)["state"] == ["pushed-state"]
    token = await exchange(api, app, query_of(location)["code"][0], pkce.verifier)
    assert token.status_code == 200, token.text

    # Spent: the request_uri cannot make a second connection.
    replay = await post_form(browser, form, openai_fields(stack, "sk-test-" + secrets.token_hex(8)))
    assert replay.status_code in (400, 403)
    assert "location" not in replay.headers


async def test_a_pushed_request_cannot_widen_the_apps_policy(
    api: httpx.AsyncClient, bus: Bus, app: RegisteredApp
) -> None:
    await set_policy(bus, app, "openai", "openrouter")
    pushed = await push(api, app, Pkce.new(), allowed_providers="openai selfhosted")
    assert pushed.status_code == 400
    error = pushed.json()["error"]
    assert error["param"] == "allowed_providers"
    assert "selfhosted" in error["message"]

    misspelt = await push(api, app, Pkce.new(), allowed_provider="openai")
    assert misspelt.status_code == 400
    assert misspelt.json()["error"]["param"] == "allowed_provider"

    other = await push(api, app, Pkce.new(), client_id="cli_someone_else")
    assert other.status_code == 400
    assert other.json()["error"]["param"] == "client_id"
