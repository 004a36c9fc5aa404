"""Retries and fallback through the whole stack, driven with the official openai SDK.

Each test gets a connection with two providers on the fake upstream: `openai` (asked for by the
app, faults chosen by model name) and `selfhosted` with preferred model `gpt-4o-mini` (the
fallback, which answers). The fake records every request under the `user` tag, so a test can
tell which provider was asked what.
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

FALLBACK_MODEL = "gpt-4o-mini"


async def create_fallback_connection(bus: Bus, upstream_base_url: str) -> AppWithConnection:
    """A fresh app whose connection has openai first and selfhosted (gpt-4o-mini) second."""
    app = await bus.request(
        ks.APP_CREATE, ks.AppCreate(name="fallback app", redirect_uris=["http://localhost/cb"])
    )
    key = "sk-test-" + secrets.token_hex(16)
    conn = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=app.app_id,
            providers=[
                ks.ProviderCredentialInput(
                    provider="openai", api_key=SecretStr(key), base_url=upstream_base_url
                ),
                ks.ProviderCredentialInput(
                    provider="selfhosted",
                    base_url=upstream_base_url,
                    preferred_model=FALLBACK_MODEL,
                ),
            ],
        ),
    )
    return AppWithConnection(
        client_id=app.client_id,
        app_id=app.app_id,
        app_api_key=app.app_api_key.get_secret_value(),
        connection_id=conn.connection_id,
        provider_key=key,
    )


@pytest.fixture
async def two_providers(bus: Bus, stack: Any) -> AppWithConnection:
    return await create_fallback_connection(bus, stack.upstream_base_url)


def new_tag() -> str:
    return "fb-" + secrets.token_hex(6)


async def models_asked(stack: Any, tag: str) -> list[str]:
    """The upstream model of every request the fake received under `tag`, in order."""
    return [r["body"]["model"] for r in await upstream_requests(stack, tag)]


async def provider_status(
    stack: Any, tenant: AppWithConnection, provider: str
) -> tuple[str, str | None]:
    async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
        response = await http.get(
            f"/v1/connections/{tenant.connection_id}/providers",
            headers={"Authorization": f"Bearer {tenant.app_api_key}"},
        )
    response.raise_for_status()
    (entry,) = [p for p in response.json()["data"] if p["provider"] == provider]
    return entry["status"], entry["last_error"]


# Each asked once: the fallback is asked at once, with no wait for a Retry-After or backoff.
@pytest.mark.parametrize(
    "model", ["fail-429", "fail-500", "fail-503", "fail-401", "hang", "slow-4000"]
)
@pytest.mark.parametrize("stream", [False, True])
async def test_failing_provider_falls_back_to_the_next_one(
    stack: Any, two_providers: AppWithConnection, model: str, stream: bool
) -> None:
    attempts = 2
    tag = new_tag()
    client = sdk_client(stack, two_providers)
    raw = await client.chat.completions.with_raw_response.create(
        model=f"openai/{model}",
        messages=[{"role": "user", "content": "fall back please"}],
        stream=stream,
        user=tag,
    )
    assert raw.headers["x-byorouter-provider"] == "selfhosted"
    assert raw.headers["x-byorouter-attempts"] == str(attempts)
    answer = raw.parse()
    if stream:
        assert isinstance(answer, openai.AsyncStream)
        text = "".join([c.choices[0].delta.content or "" async for c in answer if c.choices])
    else:
        assert not isinstance(answer, openai.AsyncStream)
        text = answer.choices[0].message.content or ""
    assert "fall back please" in text
    assert await models_asked(stack, tag) == [model] * (attempts - 1) + [FALLBACK_MODEL]


async def test_the_requests_own_fault_never_falls_back(
    stack: Any, two_providers: AppWithConnection
) -> None:
    tag = new_tag()
    client = sdk_client(stack, two_providers)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="openai/fail-400", messages=[{"role": "user", "content": "x"}], user=tag
        )
    assert caught.value.status_code == 400
    assert await models_asked(stack, tag) == ["fail-400"]


async def test_the_only_provider_is_retried_after_its_retry_after(
    bus: Bus, stack: Any, two_providers: AppWithConnection
) -> None:
    key = "sk-test-" + secrets.token_hex(16)
    conn = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=two_providers.app_id,
            providers=[
                ks.ProviderCredentialInput(
                    provider="openai", api_key=SecretStr(key), base_url=stack.upstream_base_url
                )
            ],
        ),
    )
    only_openai = AppWithConnection(
        client_id=two_providers.client_id,
        app_id=two_providers.app_id,
        app_api_key=two_providers.app_api_key,
        connection_id=conn.connection_id,
        provider_key=key,
    )
    tag = new_tag()
    began = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        await sdk_client(stack, only_openai).chat.completions.create(
            model="openai/fail-429", messages=[{"role": "user", "content": "x"}], user=tag
        )
    # Nothing else could serve: asked again, after the fake's retry-after: 1 and no sooner.
    assert time.monotonic() - began >= 0.95
    assert await models_asked(stack, tag) == ["fail-429", "fail-429"]


@pytest.mark.parametrize("model", ["cut-after-2", "error-after-2"])
async def test_no_fallback_once_the_answer_started_and_the_client_sees_the_error(
    stack: Any, two_providers: AppWithConnection, model: str
) -> None:
    tag = new_tag()
    client = sdk_client(stack, two_providers)
    stream = await client.chat.completions.create(
        model=f"openai/{model}",
        messages=[{"role": "user", "content": "one two three four five six"}],
        stream=True,
        user=tag,
    )
    received: list[str] = []

    async def read_all() -> None:
        async for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as caught:
        await read_all()
    assert "".join(received), "the first chunks reached the client before the failure"
    assert "openai" in caught.value.message
    assert await models_asked(stack, tag) == [model]


async def test_rejected_key_is_shown_as_failing_and_recovers_once_accepted(
    stack: Any, two_providers: AppWithConnection
) -> None:
    client = sdk_client(stack, two_providers)
    await client.chat.completions.create(
        model="openai/fail-401", messages=[{"role": "user", "content": "x"}]
    )
    deadline = time.monotonic() + 5
    while (status := await provider_status(stack, two_providers, "openai"))[0] != "failing":
        assert time.monotonic() < deadline, "the rejected key was never marked failing"
        await asyncio.sleep(0.05)
    last_error = status[1] or ""
    assert "openai" in last_error
    assert "401" in last_error
    assert two_providers.provider_key not in last_error
    assert (await provider_status(stack, two_providers, "selfhosted"))[0] == "ok"

    # The user fixed the key (here: the provider accepts it again); the next success says so.
    deadline = time.monotonic() + 5
    while (await provider_status(stack, two_providers, "openai")) != ("ok", None):
        assert time.monotonic() < deadline, "the accepted key still shows as failing"
        await client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
        await asyncio.sleep(0.1)
