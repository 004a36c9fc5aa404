"""The official openai SDK, unchanged, through the whole stack to a fake OpenRouter upstream."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from pydantic import SecretStr

from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_fakes.openrouter import FakeOpenRouter
from byorouter_router.settings import RouterSettings
from tests.e2e.conftest import AppWithConnection, sdk_client

LLAMA = "meta-llama/llama-3.1-8b-instruct"
PROMPT: Any = [{"role": "user", "content": "one two three four five six seven eight"}]


@pytest.fixture(scope="module")
async def openrouter() -> AsyncIterator[FakeOpenRouter]:
    fake = FakeOpenRouter(stream_chunks=4)
    await fake.start("127.0.0.1", 0)
    yield fake
    await fake.stop()


async def _tenant(bus: Bus, base_url: str, preferred_model: str | None) -> AppWithConnection:
    app = await bus.request(
        ks.APP_CREATE,
        ks.AppCreate(name="openrouter e2e app", redirect_uris=["http://localhost:3000/cb"]),
    )
    key = "sk-or-v1-" + secrets.token_hex(16)
    conn = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=app.app_id,
            providers=[
                ks.ProviderCredentialInput(
                    provider="openrouter",
                    api_key=SecretStr(key),
                    base_url=base_url,
                    preferred_model=preferred_model,
                )
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
async def or_tenant(bus: Bus, openrouter: FakeOpenRouter) -> AppWithConnection:
    """A fresh app whose one connection uses OpenRouter, with Llama 3.1 8B as preferred model."""
    return await _tenant(bus, openrouter.base_url, LLAMA)


def _tag() -> str:
    return "t-" + secrets.token_hex(6)


async def test_non_streamed_answer_reaches_openrouter_with_the_users_key_and_attribution(
    stack: Any, openrouter: FakeOpenRouter, or_tenant: AppWithConnection
) -> None:
    tag = _tag()
    client = sdk_client(stack, or_tenant)
    raw = await client.chat.completions.with_raw_response.create(
        model="openrouter/anthropic/claude-3.5-sonnet", messages=PROMPT, user=tag
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "one two three four five six seven eight"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 8
    assert raw.headers["x-byorouter-provider"] == "openrouter"

    [seen] = openrouter.requests(tag)
    assert seen["headers"]["Authorization"] == f"Bearer {or_tenant.provider_key}"
    assert (
        seen["headers"]["HTTP-Referer"] == RouterSettings.model_fields["openrouter_referer"].default
    )
    assert seen["headers"]["X-Title"] == "BYORouter"
    assert seen["body"]["model"] == "anthropic/claude-3.5-sonnet"


async def test_streamed_answer_arrives_whole_without_openrouters_keep_alives_or_usage(
    stack: Any, or_tenant: AppWithConnection
) -> None:
    client = sdk_client(stack, or_tenant)
    stream = await client.chat.completions.create(
        model=f"openrouter/{LLAMA}", messages=PROMPT, stream=True
    )
    text: list[str] = []
    finish: list[str] = []
    async for chunk in stream:
        # OpenRouter always sends usage; this client did not ask for it.
        assert chunk.usage is None
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert "".join(text) == "one two three four five six seven eight"
    assert finish == ["stop"]


async def test_streamed_usage_reaches_a_client_that_asked_for_it(
    stack: Any, or_tenant: AppWithConnection
) -> None:
    client = sdk_client(stack, or_tenant)
    stream = await client.chat.completions.create(
        model=f"openrouter/{LLAMA}",
        messages=PROMPT,
        stream=True,
        stream_options={"include_usage": True},
    )
    usages = [chunk.usage async for chunk in stream if chunk.usage is not None]
    assert [u.total_tokens for u in usages] == [16]


async def test_openrouter_default_uses_the_model_the_user_picked(
    stack: Any, openrouter: FakeOpenRouter, or_tenant: AppWithConnection
) -> None:
    tag = _tag()
    client = sdk_client(stack, or_tenant)
    stream = await client.chat.completions.create(
        model="openrouter/default", messages=PROMPT, stream=True, user=tag
    )
    text = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(text) == "one two three four five six seven eight"
    assert openrouter.requests(tag)[0]["body"]["model"] == LLAMA


async def test_openrouter_default_without_a_preferred_model_is_a_404(
    stack: Any, bus: Bus, openrouter: FakeOpenRouter
) -> None:
    tenant = await _tenant(bus, openrouter.base_url, None)
    client = sdk_client(stack, tenant)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="openrouter/default", messages=PROMPT)
    assert "preferred model" in caught.value.message


async def test_openrouter_errors_reach_the_sdk_as_openai_errors(
    stack: Any, or_tenant: AppWithConnection
) -> None:
    client = sdk_client(stack, or_tenant)
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model="openrouter/fake/busy-429", messages=PROMPT)
    assert limited.value.status_code == 429
    with pytest.raises(openai.InternalServerError) as broke:
        await client.chat.completions.create(model="openrouter/fake/fail-402", messages=PROMPT)
    assert broke.value.status_code == 502
    assert "out of credits" in broke.value.message
    assert or_tenant.provider_key not in broke.value.message
    with pytest.raises(openai.BadRequestError) as flagged:
        await client.chat.completions.create(model="openrouter/fake/fail-403", messages=PROMPT)
    assert "moderation" in flagged.value.message


async def test_error_in_the_middle_of_the_stream_raises_after_some_content(
    stack: Any, or_tenant: AppWithConnection
) -> None:
    client = sdk_client(stack, or_tenant)
    stream = await client.chat.completions.create(
        model="openrouter/fake/error-after-3", messages=PROMPT, stream=True
    )
    received: list[str] = []

    async def read_all() -> None:
        async for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as caught:
        await read_all()
    assert "".join(received), "the content before the error reached the app"
    assert "Provider disconnected unexpectedly" in caught.value.message
