"""The official openai SDK, unchanged, against the whole stack and a fake OpenAI upstream."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import AppWithConnection, sdk_client, upstream_requests


async def test_non_streamed_completion_reaches_user_provider(
    stack: Any, tenant: AppWithConnection
) -> None:
    tag = "t-" + secrets.token_hex(6)
    client = sdk_client(stack, tenant)
    completion = await client.chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "hello byorouter"}],
        user=tag,
    )
    assert completion.object == "chat.completion"
    assert "hello byorouter" in (completion.choices[0].message.content or "")
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0

    seen = await upstream_requests(stack, tag)
    assert len(seen) == 1
    auth = seen[0]["headers"].get("Authorization") or seen[0]["headers"].get("authorization")
    assert auth == f"Bearer {tenant.provider_key}"
    assert tenant.app_api_key not in str(seen[0])
    # The provider prefix is ours; the upstream gets its own model id.
    assert seen[0]["body"]["model"] == "gpt-4o-mini"


async def test_streamed_completion_arrives_in_order_with_usage(
    stack: Any, tenant: AppWithConnection
) -> None:
    client = sdk_client(stack, tenant)
    stream = await client.chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "one two three four five"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas: list[str] = []
    usage = None
    finish = None
    async for chunk in stream:
        if chunk.choices:
            deltas.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    text = "".join(deltas)
    assert "one two three four five" in text
    assert len([d for d in deltas if d]) > 1, "tokens should arrive as several chunks"
    assert finish == "stop"
    assert usage is not None
    assert usage.completion_tokens > 0


async def test_streamed_and_plain_responses_say_who_served_them(
    stack: Any, tenant: AppWithConnection
) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
        response = await http.post(
            "/v1/chat/completions",
            headers={
                "Authorization": f"Bearer {tenant.app_api_key}",
                "X-Byorouter-Connection": tenant.connection_id,
            },
            json={
                "model": "openai/gpt-4o-mini",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-byorouter-provider"] == "openai"
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


async def test_wrong_app_key_is_401(stack: Any, tenant: AppWithConnection) -> None:
    key_id = tenant.app_api_key.split("_")[2]
    forged = f"byo_sk_{key_id}_" + "A" * 43
    for key in ("not-a-key", forged):
        client = openai.AsyncOpenAI(
            base_url=stack.gateway_url + "/v1",
            api_key=key,
            max_retries=0,
            default_headers={"X-Byorouter-Connection": tenant.connection_id},
        )
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(
                model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
        assert caught.value.status_code == 401
        assert key not in str(caught.value.body)


async def test_another_apps_connection_is_not_found(
    stack: Any, tenant: AppWithConnection, bus: Any
) -> None:
    from tests.e2e.conftest import create_app_with_connection

    other = await create_app_with_connection(bus, stack.upstream_base_url, name="other app")
    client = openai.AsyncOpenAI(
        base_url=stack.gateway_url + "/v1",
        api_key=tenant.app_api_key,
        max_retries=0,
        default_headers={"X-Byorouter-Connection": other.connection_id},
    )
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    missing = openai.AsyncOpenAI(
        base_url=stack.gateway_url + "/v1",
        api_key=tenant.app_api_key,
        max_retries=0,
        default_headers={"X-Byorouter-Connection": "conn_" + "0" * 24},
    )
    with pytest.raises(openai.NotFoundError) as missing_err:
        await missing.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
        headers = {"Authorization": f"Bearer {tenant.app_api_key}"}
        assert (
            await http.get(f"/v1/connections/{other.connection_id}", headers=headers)
        ).status_code == 404
        assert (
            await http.delete(f"/v1/connections/{other.connection_id}", headers=headers)
        ).status_code == 404
    assert missing_err.value.status_code == 404


async def test_model_of_unconnected_provider_is_404(stack: Any, tenant: AppWithConnection) -> None:
    client = sdk_client(stack, tenant)
    for model in ("anthropic/claude-3-5-sonnet-20241022", "nope/model", "gpt-4o"):
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "x"}]
            )
        assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


async def test_missing_connection_header_is_400(stack: Any, tenant: AppWithConnection) -> None:
    client = openai.AsyncOpenAI(
        base_url=stack.gateway_url + "/v1", api_key=tenant.app_api_key, max_retries=0
    )
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )


@pytest.mark.parametrize(
    ("model", "error", "status"),
    [
        ("openai/fail-429", openai.RateLimitError, 429),
        ("openai/fail-500", openai.InternalServerError, 502),
        ("openai/hang", openai.APIStatusError, 504),
    ],
)
async def test_upstream_failures_map_to_clear_statuses(
    stack: Any, tenant: AppWithConnection, model: str, error: type[Exception], status: int
) -> None:
    client = sdk_client(stack, tenant)
    for stream in (False, True):
        with pytest.raises(error) as caught:
            await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "x"}], stream=stream
            )
        assert isinstance(caught.value, openai.APIStatusError)
        assert caught.value.status_code == status
        if status == 429:
            assert caught.value.response.headers.get("retry-after") == "1"


async def test_client_disconnect_closes_upstream_within_a_second(
    stack: Any, tenant: AppWithConnection
) -> None:
    tag = "cut-" + secrets.token_hex(6)
    async with (
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            headers={
                "Authorization": f"Bearer {tenant.app_api_key}",
                "X-Byorouter-Connection": tenant.connection_id,
            },
            json={
                "model": "openai/drip-200",
                "stream": True,
                "user": tag,
                "messages": [{"role": "user", "content": "a b c d e f g h i j k l"}],
            },
        ) as response,
    ):
        assert response.status_code == 200
        async for _ in response.aiter_bytes():
            break  # got the first tokens; now the user closes the tab
    deadline = time.monotonic() + 1.0
    async with httpx.AsyncClient() as client:
        while True:
            disconnects = (
                await client.get(stack.upstream_url + "/_fake/disconnects", params={"tag": tag})
            ).json()
            if disconnects.get("count", 0) >= 1:
                break
            assert time.monotonic() < deadline, "upstream still streaming 1 s after the client left"
            await asyncio.sleep(0.05)


async def test_silent_upstream_keeps_the_stream_alive_with_sse_comments(
    stack: Any, tenant: AppWithConnection
) -> None:
    # One word: role, one content chunk, finish, [DONE], each 1.5 s apart; the router sends a
    # keep-alive every second of silence and the gateway turns it into an SSE comment.
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=15) as http:
        response = await http.post(
            "/v1/chat/completions",
            headers={
                "Authorization": f"Bearer {tenant.app_api_key}",
                "X-Byorouter-Connection": tenant.connection_id,
            },
            json={
                "model": "openai/drip-1500",
                "stream": True,
                "messages": [{"role": "user", "content": "patience"}],
            },
        )
    assert response.status_code == 200
    events = [e for e in response.text.split("\n\n") if e]
    assert ": keep-alive" in events
    data = [e for e in events if e.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    assert "patience" in response.text
