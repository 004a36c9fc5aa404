"""Token usage through the whole stack: what the provider reported is what the app reads back.

Usage is recorded asynchronously (the router publishes it, keystore adds it up), so each test
polls GET /v1/connections/{id}/usage until the request shows up, within a bound.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from byorouter_common.bus import Bus
from tests.e2e.conftest import (
    AppWithConnection,
    create_app_with_connection,
    sdk_client,
    upstream_requests,
)
from tests.e2e.test_fallback import FALLBACK_MODEL, create_fallback_connection


async def usage_of(stack: Any, tenant: AppWithConnection) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
        return await http.get(
            f"/v1/connections/{tenant.connection_id}/usage",
            headers={"Authorization": f"Bearer {tenant.app_api_key}"},
        )


async def usage_rows_once(
    stack: Any, tenant: AppWithConnection, requests: int, within_s: float = 5.0
) -> list[dict[str, Any]]:
    """The usage rows as soon as they count `requests` requests in all."""
    deadline = time.monotonic() + within_s
    while True:
        response = await usage_of(stack, tenant)
        assert response.status_code == 200
        body = response.json()
        assert body["object"] == "list"
        if sum(row["requests"] for row in body["data"]) >= requests:
            rows: list[dict[str, Any]] = body["data"]
            return rows
        assert time.monotonic() < deadline, f"usage not recorded within {within_s}s: {body}"
        await asyncio.sleep(0.05)


def today() -> str:
    return datetime.now(UTC).date().isoformat()


async def test_usage_of_a_plain_and_a_streamed_request_is_recorded_exactly(
    stack: Any, tenant: AppWithConnection
) -> None:
    client = sdk_client(stack, tenant)
    completion = await client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "count these words"}]
    )
    assert completion.usage is not None
    stream = await client.chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "and these five words too"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed = None
    async for chunk in stream:
        streamed = chunk.usage or streamed
    assert streamed is not None

    rows = await usage_rows_once(stack, tenant, requests=2)
    # Nothing more arrives later: the two requests are counted once each.
    await asyncio.sleep(0.3)
    assert (await usage_of(stack, tenant)).json()["data"] == rows
    assert rows == [
        {
            "day": today(),
            "provider": "openai",
            "model": "gpt-4o-mini",
            "requests": 2,
            "prompt_tokens": completion.usage.prompt_tokens + streamed.prompt_tokens,
            "completion_tokens": completion.usage.completion_tokens + streamed.completion_tokens,
            "total_tokens": completion.usage.total_tokens + streamed.total_tokens,
        }
    ]


async def test_stream_without_include_usage_gets_no_usage_yet_it_is_recorded(
    stack: Any, tenant: AppWithConnection
) -> None:
    tag = "u-" + secrets.token_hex(6)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as http:
        response = await http.post(
            "/v1/chat/completions",
            headers={
                "Authorization": f"Bearer {tenant.app_api_key}",
                "X-Byorouter-Connection": tenant.connection_id,
            },
            json={
                "model": "openai/gpt-4o-mini",
                "messages": [{"role": "user", "content": "no usage for me please"}],
                "stream": True,
                "user": tag,
            },
        )
    assert response.status_code == 200
    events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert "no usage for me please" in text

    (upstream,) = await upstream_requests(stack, tag)
    assert upstream["body"]["stream_options"] == {"include_usage": True}
    (row,) = await usage_rows_once(stack, tenant, requests=1)
    assert row["requests"] == 1
    assert row["completion_tokens"] > 0
    assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]


async def test_usage_is_recorded_for_the_provider_that_served_a_fallback(
    stack: Any, bus: Bus
) -> None:
    tenant = await create_fallback_connection(bus, stack.upstream_base_url)
    client = sdk_client(stack, tenant)
    completion = await client.chat.completions.create(
        model="openai/fail-401", messages=[{"role": "user", "content": "x y z"}]
    )
    assert completion.usage is not None
    (row,) = await usage_rows_once(stack, tenant, requests=1)
    assert (row["provider"], row["model"]) == ("selfhosted", FALLBACK_MODEL)
    assert row["total_tokens"] == completion.usage.total_tokens


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failed_request_records_no_usage(
    stack: Any, tenant: AppWithConnection, stream: bool
) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as http:
        response = await http.post(
            "/v1/chat/completions",
            headers={
                "Authorization": f"Bearer {tenant.app_api_key}",
                "X-Byorouter-Connection": tenant.connection_id,
            },
            json={
                "model": "openai/fail-400",
                "messages": [{"role": "user", "content": "x"}],
                "stream": stream,
            },
        )
    assert response.status_code == 400
    # A successful request afterwards is the only one counted.
    await sdk_client(stack, tenant).chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
    )
    (row,) = await usage_rows_once(stack, tenant, requests=1)
    await asyncio.sleep(0.2)
    assert (await usage_of(stack, tenant)).json()["data"] == [row]


async def test_another_apps_connection_usage_is_not_found(
    stack: Any, tenant: AppWithConnection, bus: Bus
) -> None:
    other = await create_app_with_connection(bus, stack.upstream_base_url, name="other app")
    async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
        response = await http.get(
            f"/v1/connections/{other.connection_id}/usage",
            headers={"Authorization": f"Bearer {tenant.app_api_key}"},
        )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "connection_not_found"
