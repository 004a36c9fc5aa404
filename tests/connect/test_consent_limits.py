"""Limits the person sets on the consent page: stored with the new connection, enforced at once."""

from __future__ import annotations

import secrets

import httpx

from byorouter_cli.dev.stack import Stack
from tests.connect.conftest import (
    Pkce,
    RegisteredApp,
    authorize_query,
    consent,
    exchange,
    openai_fields,
    post_form,
    query_of,
)


async def connect_with(
    browser: httpx.AsyncClient,
    api: httpx.AsyncClient,
    stack: Stack,
    app: RegisteredApp,
    **limits: str,
) -> str:
    """The person connects an OpenAI key with `limits` typed in; returns the connection id."""
    pkce = Pkce.new()
    form = await consent(browser, app, pkce)
    done = await post_form(
        browser, form, {**openai_fields(stack, "sk-test-" + secrets.token_hex(8)), **limits}
    )
    assert done.status_code == 303, done.text
    token = await exchange(api, app, query_of(done.headers["location"])["code"][0], pkce.verifier)
    assert token.status_code == 200, token.text
    connection: str = token.json()["connection_id"]
    return connection


async def chat(api: httpx.AsyncClient, app: RegisteredApp, connection: str) -> httpx.Response:
    return await api.post(
        "/v1/chat/completions",
        json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={**app.auth, "X-Byorouter-Connection": connection},
    )


async def test_a_request_cap_set_at_consent_is_shown_and_enforced(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    page = (await browser.get(authorize_query(app, Pkce.new()))).text
    assert "Limits for Portfolio Tracker (optional)" in page

    connection = await connect_with(
        browser,
        api,
        stack,
        app,
        limit_requests_per_day="1",
        limit_models="openai/gpt-4o-mini\ngpt-4.1-nano",
    )
    got = await api.get(f"/v1/connections/{connection}", headers=app.auth)
    limits = got.json()["limits"]
    assert limits["requests_per_day"] == 1
    assert limits["requests_left"] == 1
    assert limits["tokens_per_month"] is None
    assert limits["allowed_models"] == ["openai/gpt-4o-mini", "gpt-4.1-nano"]

    assert (await chat(api, app, connection)).status_code == 200
    second = await chat(api, app, connection)
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "user_limit_reached"


async def test_connecting_without_limits_sets_none(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    connection = await connect_with(browser, api, stack, app)
    got = await api.get(f"/v1/connections/{connection}", headers=app.auth)
    assert got.json()["limits"] is None
    assert (await chat(api, app, connection)).status_code == 200
    assert (await chat(api, app, connection)).status_code == 200


async def test_a_limit_that_is_not_a_number_keeps_the_person_on_the_page(
    browser: httpx.AsyncClient, stack: Stack, app: RegisteredApp
) -> None:
    form = await consent(browser, app, Pkce.new())
    answer = await post_form(
        browser,
        form,
        {
            **openai_fields(stack, "sk-test-" + secrets.token_hex(8)),
            "limit_tokens_per_month": "lots",
        },
    )
    assert answer.status_code == 400
    assert "location" not in answer.headers
    assert "Tokens a month must be a whole number" in answer.text
    # What was typed stays, so the person fixes it rather than starting again.
    assert 'value="lots"' in answer.text
