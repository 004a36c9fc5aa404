"""The app's own default provider through the whole stack, driven with the official openai SDK.

The operator sets it (the bus call `byorouter app set-default` makes) on the fake OpenAI upstream
with a key of the app's own; the fake records each request's headers under its `user` tag, so a
test can tell whose key paid for an answer.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr

from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from tests.e2e.conftest import AppWithConnection, sdk_client, upstream_requests

DEFAULT_MODEL = "gpt-4o-mini"


async def app_with_connection(
    bus: Bus, upstream_base_url: str, *, fallback_to_default: bool
) -> AppWithConnection:
    app = await bus.request(
        ks.APP_CREATE, ks.AppCreate(name="default app", redirect_uris=["http://localhost/cb"])
    )
    key = "sk-user-" + secrets.token_hex(16)
    conn = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=app.app_id,
            providers=[
                ks.ProviderCredentialInput(
                    provider="openai", api_key=SecretStr(key), base_url=upstream_base_url
                )
            ],
            fallback_to_default=fallback_to_default,
        ),
    )
    return AppWithConnection(
        client_id=app.client_id,
        app_id=app.app_id,
        app_api_key=app.app_api_key.get_secret_value(),
        connection_id=conn.connection_id,
        provider_key=key,
    )


async def set_default(bus: Bus, tenant: AppWithConnection, upstream_base_url: str) -> str:
    """Give the tenant's app a default provider on the fake upstream; returns the app's key."""
    key = "sk-app-" + secrets.token_hex(16)
    await bus.request(
        ks.APP_DEFAULT_SET,
        ks.AppDefaultSet(
            client_id=tenant.client_id,
            provider="openai",
            api_key=SecretStr(key),
            base_url=upstream_base_url,
            model=DEFAULT_MODEL,
        ),
    )
    return key


def new_tag() -> str:
    return "ad-" + secrets.token_hex(6)


async def keys_used(stack: Any, tag: str) -> list[tuple[str, str]]:
    """(model, bearer key) of every request the fake received under `tag`, in order."""
    return [
        (r["body"]["model"], r["headers"].get("Authorization", "").removeprefix("Bearer "))
        for r in await upstream_requests(stack, tag)
    ]


@pytest.fixture
async def with_fallback(bus: Bus, stack: Any) -> AppWithConnection:
    return await app_with_connection(bus, stack.upstream_base_url, fallback_to_default=True)


@pytest.fixture
async def without_fallback(bus: Bus, stack: Any) -> AppWithConnection:
    return await app_with_connection(bus, stack.upstream_base_url, fallback_to_default=False)


@pytest.mark.parametrize("stream", [False, True])
async def test_default_model_is_served_by_the_apps_own_provider_and_key(
    bus: Bus, stack: Any, without_fallback: AppWithConnection, stream: bool
) -> None:
    app_key = await set_default(bus, without_fallback, stack.upstream_base_url)
    tag = new_tag()

    raw = await sdk_client(stack, without_fallback).chat.completions.with_raw_response.create(
        model="default/gpt-4o",
        messages=[{"role": "user", "content": "on the house"}],
        stream=stream,
        user=tag,
    )

    assert raw.headers["x-byorouter-provider"] == "default"
    answer = raw.parse()
    if stream:
        assert isinstance(answer, openai.AsyncStream)
        text = "".join([c.choices[0].delta.content or "" async for c in answer if c.choices])
    else:
        assert not isinstance(answer, openai.AsyncStream)
        text = answer.choices[0].message.content or ""
    assert "on the house" in text
    assert await keys_used(stack, tag) == [("gpt-4o", app_key)]


async def test_default_alone_asks_for_the_configured_model(
    bus: Bus, stack: Any, without_fallback: AppWithConnection
) -> None:
    app_key = await set_default(bus, without_fallback, stack.upstream_base_url)
    tag = new_tag()

    raw = await sdk_client(stack, without_fallback).chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}], user=tag
    )

    assert raw.headers["x-byorouter-provider"] == "default"
    assert await keys_used(stack, tag) == [(DEFAULT_MODEL, app_key)]


async def test_a_failing_provider_falls_back_to_the_app_default_when_the_connection_allows(
    bus: Bus, stack: Any, with_fallback: AppWithConnection
) -> None:
    app_key = await set_default(bus, with_fallback, stack.upstream_base_url)
    tag = new_tag()

    raw = await sdk_client(stack, with_fallback).chat.completions.with_raw_response.create(
        model="openai/fail-500", messages=[{"role": "user", "content": "rescue me"}], user=tag
    )

    assert raw.headers["x-byorouter-provider"] == "default"
    # The failing provider asked once, then the default at once (no backoff in between).
    assert raw.headers["x-byorouter-attempts"] == "2"
    assert "rescue me" in (raw.parse().choices[0].message.content or "")
    used = await keys_used(stack, tag)
    assert used[-1] == (DEFAULT_MODEL, app_key)
    assert {key for _, key in used[:-1]} == {with_fallback.provider_key}


async def test_a_connection_that_does_not_allow_it_never_falls_back_to_the_app_default(
    bus: Bus, stack: Any, without_fallback: AppWithConnection
) -> None:
    app_key = await set_default(bus, without_fallback, stack.upstream_base_url)
    tag = new_tag()

    with pytest.raises(openai.InternalServerError):
        await sdk_client(stack, without_fallback).chat.completions.create(
            model="openai/fail-500", messages=[{"role": "user", "content": "no rescue"}], user=tag
        )

    assert app_key not in {key for _, key in await keys_used(stack, tag)}


async def test_default_without_an_app_default_is_a_404(
    stack: Any, without_fallback: AppWithConnection
) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await sdk_client(stack, without_fallback).chat.completions.create(
            model="default/gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    assert "default provider" in str(err.value)


async def test_a_cleared_default_stops_serving_at_once(
    bus: Bus, stack: Any, without_fallback: AppWithConnection
) -> None:
    await set_default(bus, without_fallback, stack.upstream_base_url)
    client = sdk_client(stack, without_fallback)
    messages: Any = [{"role": "user", "content": "hi"}]
    # Cached by the router now.
    await client.chat.completions.create(model="default/gpt-4o", messages=messages)

    await bus.request(
        ks.APP_DEFAULT_CLEAR, ks.AppDefaultClear(client_id=without_fallback.client_id)
    )

    deadline = time.monotonic() + 1.0
    while True:
        try:
            await client.chat.completions.create(model="default/gpt-4o", messages=messages)
        except openai.NotFoundError:
            return
        assert time.monotonic() < deadline, "the router kept serving a cleared default"
        await asyncio.sleep(0.05)


async def test_usage_served_by_the_default_is_recorded_under_default(
    bus: Bus, stack: Any, without_fallback: AppWithConnection
) -> None:
    await set_default(bus, without_fallback, stack.upstream_base_url)
    completion = await sdk_client(stack, without_fallback).chat.completions.create(
        model="default/gpt-4o", messages=[{"role": "user", "content": "count me"}]
    )
    assert completion.usage is not None

    deadline = time.monotonic() + 5.0
    async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
        while True:
            response = await http.get(
                f"/v1/connections/{without_fallback.connection_id}/usage",
                headers={"Authorization": f"Bearer {without_fallback.app_api_key}"},
            )
            rows = response.json()["data"]
            if rows:
                break
            assert time.monotonic() < deadline, "usage not recorded within 5 s"
            await asyncio.sleep(0.1)
    assert [(r["provider"], r["model"], r["total_tokens"]) for r in rows] == [
        ("default", "gpt-4o", completion.usage.total_tokens)
    ]


async def test_model_list_offers_the_app_default_models_under_default(
    bus: Bus, stack: Any, without_fallback: AppWithConnection
) -> None:
    client = sdk_client(stack, without_fallback)
    before = {m.id async for m in client.models.list()}
    assert before, "the connection's own provider lists models"
    assert not any(i.startswith("default/") for i in before)

    await set_default(bus, without_fallback, stack.upstream_base_url)

    deadline = time.monotonic() + 2
    while True:
        after = {m.id async for m in client.models.list()}
        if any(i.startswith("default/") for i in after):
            break
        assert time.monotonic() < deadline, "default models not listed after set-default"
        await asyncio.sleep(0.05)
    assert {"default/" + i.partition("/")[2] for i in before} <= after
