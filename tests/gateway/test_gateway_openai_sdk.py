"""The official openai SDK, unchanged, against the gateway (router: conftest.py's stand-in)."""

from __future__ import annotations

import openai
import pytest

from tests.gateway.conftest import RunningGateway, Tenant


def sdk(gateway: RunningGateway, tenant: Tenant, api_key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=gateway.url + "/v1",
        api_key=api_key or tenant.app_key,
        default_headers={"X-Byorouter-Connection": tenant.connection_id},
        max_retries=0,
    )


async def test_sdk_gets_a_plain_completion(gateway: RunningGateway, tenant: Tenant) -> None:
    completion = await sdk(gateway, tenant).chat.completions.create(
        model="test/echo", messages=[{"role": "user", "content": "hello sdk"}]
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "echo: hello sdk"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 7


async def test_sdk_streams_a_completion_with_usage(gateway: RunningGateway, tenant: Tenant) -> None:
    stream = await sdk(gateway, tenant).chat.completions.create(
        model="test/echo",
        messages=[{"role": "user", "content": "streamed words"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "echo: streamed words"
    assert finish == "stop"
    assert usage is not None
    assert usage.completion_tokens == 4


async def test_sdk_sees_an_error_after_start_as_an_api_error(
    gateway: RunningGateway, tenant: Tenant
) -> None:
    stream = await sdk(gateway, tenant).chat.completions.create(
        model="test/error-after-start", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        async for _ in stream:
            pass
    assert "mid-answer" in str(caught.value)


async def test_sdk_raises_its_typed_errors(gateway: RunningGateway, tenant: Tenant) -> None:
    client = sdk(gateway, tenant)
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model="test/rate-limited", messages=messages)  # type: ignore[arg-type]
    assert limited.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="test/not-connected", messages=messages)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        await sdk(gateway, tenant, api_key="byo_sk_nope").chat.completions.create(
            model="test/echo",
            messages=messages,  # type: ignore[arg-type]
        )
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="test/echo", messages=[])


async def test_sdk_lists_models(gateway: RunningGateway, tenant: Tenant) -> None:
    models = [m.id async for m in sdk(gateway, tenant).models.list()]
    assert models == ["openai/gpt-4o-mini"]
