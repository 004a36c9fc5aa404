"""What apps call besides chat, through the official `openai` SDK and the whole stack:
`/v1/embeddings` and `/v1/responses` reach the user's OpenAI-compatible providers natively, are
billed, and refuse Anthropic with a 400 that says why."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from pydantic import SecretStr

from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_fakes.openrouter import FakeOpenRouter
from tests.e2e.conftest import AppWithConnection, sdk_client, upstream_requests
from tests.e2e.test_anthropic_e2e import claude, claude_tenant  # noqa: F401 (fixtures)
from tests.e2e.test_usage import usage_rows_once


def expected_vector(text: str) -> list[float]:
    """The fake upstream's deterministic embedding of `text` (see byorouter_fakes.openai)."""
    raw = [b - 127.5 for b in hashlib.sha256(text.encode()).digest()[:8]]
    norm = sum(x * x for x in raw) ** 0.5
    return [round(x / norm, 6) for x in raw]


@pytest.fixture(scope="module")
async def openrouter() -> AsyncIterator[FakeOpenRouter]:
    fake = FakeOpenRouter(stream_chunks=4)
    await fake.start("127.0.0.1", 0)
    yield fake
    await fake.stop()


async def tenant_with(bus: Bus, provider: str, base_url: str) -> AppWithConnection:
    app = await bus.request(
        ks.APP_CREATE, ks.AppCreate(name="passthrough e2e", redirect_uris=["http://localhost/cb"])
    )
    key = "sk-test-" + secrets.token_hex(16)
    conn = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=app.app_id,
            providers=[
                ks.ProviderCredentialInput(
                    provider=provider, api_key=SecretStr(key), base_url=base_url
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


async def test_openai_embeddings_reach_the_users_provider_and_are_billed(
    stack: Any, tenant: AppWithConnection
) -> None:
    tag = "t-" + secrets.token_hex(6)
    client = sdk_client(stack, tenant)
    result = await client.embeddings.create(
        model="openai/text-embedding-3-small",
        input=["alpha beta", "gamma"],
        user=tag,
        encoding_format="float",
    )
    assert [item.embedding for item in result.data] == [
        expected_vector("alpha beta"),
        expected_vector("gamma"),
    ]
    assert result.usage.prompt_tokens == 3
    (seen,) = await upstream_requests(stack, tag)
    assert seen["body"]["model"] == "text-embedding-3-small"
    assert seen["headers"].get("Authorization") == f"Bearer {tenant.provider_key}"
    (row,) = await usage_rows_once(stack, tenant, requests=1)
    assert (row["provider"], row["model"]) == ("openai", "text-embedding-3-small")
    assert (row["prompt_tokens"], row["total_tokens"]) == (3, 3)


@pytest.mark.parametrize("kind", ["openrouter", "selfhosted"])
async def test_embeddings_through_openrouter_and_a_selfhosted_url(
    stack: Any, bus: Bus, openrouter: FakeOpenRouter, kind: str
) -> None:
    base_url = openrouter.base_url if kind == "openrouter" else stack.upstream_base_url
    tenant = await tenant_with(bus, kind, base_url)
    model = "openai/text-embedding-3-small" if kind == "openrouter" else "nomic-embed-text"
    result = await sdk_client(stack, tenant).embeddings.create(
        model=f"{kind}/{model}", input="one text", encoding_format="float"
    )
    assert result.data[0].embedding == expected_vector("one text")
    assert result.model == model


async def test_embeddings_errors_are_mapped_as_for_chat(
    stack: Any, tenant: AppWithConnection
) -> None:
    client = sdk_client(stack, tenant)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.embeddings.create(model="openai/fail-404", input="x")
    assert "does not offer this model" in caught.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        await client.embeddings.create(model="openai/text-embedding-3-small", input=[])
    assert refused.value.param == "input"


async def test_anthropic_has_no_embeddings_and_says_so(
    stack: Any,
    claude_tenant: AppWithConnection,  # noqa: F811
) -> None:
    client = sdk_client(stack, claude_tenant)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.embeddings.create(model="anthropic/claude-sonnet-4-5", input="x")
    assert caught.value.code == "operation_not_supported"
    assert "Anthropic has no embeddings" in caught.value.message


async def test_responses_non_streamed_reaches_the_provider_and_is_billed(
    stack: Any, tenant: AppWithConnection
) -> None:
    tag = "t-" + secrets.token_hex(6)
    client = sdk_client(stack, tenant)
    response = await client.responses.create(
        model="openai/gpt-4.1-mini", input="hello responses api", user=tag
    )
    assert response.object == "response"
    assert response.output_text == "hello responses api"
    assert response.usage is not None
    assert response.usage.output_tokens == 3
    (seen,) = await upstream_requests(stack, tag)
    assert seen["path"].endswith("/v1/responses")
    assert seen["body"]["model"] == "gpt-4.1-mini"
    assert "stream_options" not in seen["body"]
    (row,) = await usage_rows_once(stack, tenant, requests=1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (3, 3)


@pytest.mark.parametrize("kind", ["openai", "openrouter", "selfhosted"])
async def test_responses_stream_carries_event_names_and_usage(
    stack: Any, bus: Bus, openrouter: FakeOpenRouter, kind: str
) -> None:
    base_url = openrouter.base_url if kind == "openrouter" else stack.upstream_base_url
    tenant = await tenant_with(bus, kind, base_url)
    model = "openai/gpt-4o-mini" if kind == "openrouter" else "gpt-4o-mini"
    client = sdk_client(stack, tenant)
    stream = await client.responses.create(
        model=f"{kind}/{model}", input="one two three four five six", stream=True
    )
    kinds: list[str] = []
    deltas: list[str] = []
    completed = None
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type == "response.completed":
            completed = event.response
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert len(deltas) > 1
    assert "".join(deltas) == "one two three four five six"
    assert completed is not None
    assert completed.usage is not None
    (row,) = await usage_rows_once(stack, tenant, requests=1)
    assert row["completion_tokens"] == completed.usage.output_tokens == 6


async def test_responses_stream_has_event_lines_and_no_done_marker(
    stack: Any, tenant: AppWithConnection
) -> None:
    client = sdk_client(stack, tenant)
    async with client.responses.with_streaming_response.create(
        model="openai/gpt-4o-mini", input="raw bytes please", stream=True
    ) as raw:
        body = (await raw.read()).decode()
    assert body.startswith("event: response.created\ndata: {")
    assert "event: response.output_text.delta\n" in body
    assert "[DONE]" not in body


async def test_responses_errors_are_mapped_as_for_chat(
    stack: Any, tenant: AppWithConnection
) -> None:
    client = sdk_client(stack, tenant)
    # A rejected user key is the provider's answer, not the app's fault: 502, as for chat.
    with pytest.raises(openai.InternalServerError) as rejected:
        await client.responses.create(model="openai/fail-401", input="x")
    assert rejected.value.code == "provider_auth_failed"
    with pytest.raises(openai.NotFoundError) as caught:
        await client.responses.create(model="nonsense-without-provider", input="x")
    assert "start with a provider" in caught.value.message


async def test_anthropic_gets_a_clear_400_for_responses_not_a_lossy_conversion(
    stack: Any,
    claude_tenant: AppWithConnection,  # noqa: F811
) -> None:
    client = sdk_client(stack, claude_tenant)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="anthropic/claude-sonnet-4-5", input="x", stream=True)
    assert caught.value.code == "operation_not_supported"
    assert "/v1/chat/completions" in caught.value.message


async def test_a_responses_stream_that_fails_midway_ends_with_an_error_event(
    stack: Any, tenant: AppWithConnection
) -> None:
    client = sdk_client(stack, tenant)
    async with client.responses.with_streaming_response.create(
        model="openai/error-after-4", input="a b c d e f", stream=True
    ) as raw:
        body = (await raw.read()).decode()
    assert body.count("event: response.output_text.delta\n") == 1
    assert body.endswith("\n\n")
    last = body.strip().split("\n\n")[-1]
    assert last.startswith("event: error\ndata: {")
    assert "in the middle of the answer" in last
    assert "response.completed" not in body

    stream = await client.responses.create(
        model="openai/error-after-4", input="a b c d e f", stream=True
    )
    with pytest.raises(openai.APIError, match="middle of the answer"):
        async for _ in stream:
            pass
