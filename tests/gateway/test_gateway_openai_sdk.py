"""The official openai SDK, unchanged, against the gateway: what tests/e2e/ does not already show.

Plain and streamed completions and the typed errors of upstream failures are covered end to end
in tests/e2e/test_chat_openai_sdk.py; here are the gateway's own answers the SDK must understand.
"""

from __future__ import annotations

import openai
import pytest

from byorouter_cli.dev.stack import Stack
from tests.gateway.gateway_client import Tenant


def sdk(stack: Stack, tenant: Tenant) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=stack.gateway_url + "/v1",
        api_key=tenant.app_key,
        default_headers={"X-Byorouter-Connection": tenant.connection_id},
        max_retries=0,
    )


async def test_sdk_sees_an_error_after_start_as_an_api_error(stack: Stack, tenant: Tenant) -> None:
    stream = await sdk(stack, tenant).chat.completions.create(
        model="openai/error-after-2", messages=[{"role": "user", "content": "x"}], stream=True
    )
    received: list[str] = []

    async def read_to_the_end() -> None:
        async for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as caught:
        await read_to_the_end()
    assert "".join(received) == "x"  # what arrived before the failure was delivered
    assert "middle of the answer" in str(caught.value)


async def test_sdk_raises_bad_request_for_an_empty_conversation(
    stack: Stack, tenant: Tenant
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(stack, tenant).chat.completions.create(model="openai/gpt-4o-mini", messages=[])
    assert caught.value.param == "messages"


async def test_sdk_lists_models(stack: Stack, tenant: Tenant) -> None:
    models = [m.id async for m in sdk(stack, tenant).models.list()]
    assert "openai/gpt-4o-mini" in models
    assert all(m.startswith("openai/") for m in models)
