"""Token usage through the whole stack: what the provider reported is what the app reads back.

Usage is recorded asynchronously (the router publishes it to a JetStream stream, keystore adds
it up), so each test polls GET /v1/connections/{id}/usage until the request shows up, within a
bound.
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
from byorouter_common.contracts import events
from tests.e2e.conftest import (
    AppWithConnection,
    create_app_with_connection,
    sdk_client,
    upstream_requests,
)
from tests.e2e.test_anthropic_e2e import claude, claude_tenant  # noqa: F401 (fixtures)
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
            "cached_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
            "partial_requests": 0,
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


def chat_headers(tenant: AppWithConnection) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {tenant.app_api_key}",
        "X-Byorouter-Connection": tenant.connection_id,
    }


async def settled_rows(
    stack: Any, tenant: AppWithConnection, requests: int
) -> list[dict[str, Any]]:
    """The rows once they count `requests`, checked again later: nothing more arrives."""
    rows = await usage_rows_once(stack, tenant, requests=requests, within_s=15.0)
    await asyncio.sleep(0.5)
    again: list[dict[str, Any]] = (await usage_of(stack, tenant)).json()["data"]
    assert again == rows
    assert sum(row["requests"] for row in rows) == requests
    return rows


async def test_requests_finishing_while_keystore_is_down_are_recorded_once_it_is_back(
    stack: Any, tenant: AppWithConnection
) -> None:
    client = sdk_client(stack, tenant)
    ask = [{"role": "user", "content": "one two three"}]
    # Warm the gateway's app-key and the router's credential caches: keystore is not needed
    # to answer below, only to record.
    await client.chat.completions.create(model="openai/gpt-4o-mini", messages=ask)
    await usage_rows_once(stack, tenant, requests=1)
    await asyncio.to_thread(stack.stop_service, "keystore")
    try:
        for stream in (False, True, False, True):
            if stream:
                chunks = await client.chat.completions.create(
                    model="openai/gpt-4o-mini", messages=ask, stream=True
                )
                assert [chunk async for chunk in chunks]
            else:
                answer = await client.chat.completions.create(
                    model="openai/gpt-4o-mini", messages=ask
                )
                assert answer.choices[0].message.content
    finally:
        await asyncio.to_thread(stack.start_service, "keystore")
    (row,) = await settled_rows(stack, tenant, requests=5)
    assert row["total_tokens"] == 5 * (3 + 3)


async def test_a_usage_report_delivered_twice_is_counted_once(
    stack: Any, tenant: AppWithConnection, bus: Bus
) -> None:
    report = events.UsageEvent(
        request_id="req_" + secrets.token_hex(16),
        app_id=tenant.app_id,
        connection_id=tenant.connection_id,
        provider="openai",
        model="gpt-4o-mini",
        prompt_tokens=100,
        completion_tokens=20,
        total_tokens=120,
        at=datetime.now(UTC),
    )
    js = bus.nc.jetstream()
    data = report.model_dump_json().encode()
    # The same message id (a retried publish) and a new one (a redelivery past the window).
    for msg_id in ("retry", "retry", "redelivered"):
        await js.publish(
            events.USAGE.subject, data, headers={"Nats-Msg-Id": report.request_id + msg_id}
        )
    # A real request afterwards: once it is counted, the reports before it were handled.
    await sdk_client(stack, tenant).chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
    )
    (row,) = await settled_rows(stack, tenant, requests=2)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (100 + 1, 20 + 1)


async def test_a_stream_cut_by_the_upstream_records_what_was_delivered(
    stack: Any, tenant: AppWithConnection
) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as http:
        response = await http.post(
            "/v1/chat/completions",
            headers=chat_headers(tenant),
            json={
                "model": "openai/cut-after-3",
                "messages": [{"role": "user", "content": "alpha beta gamma delta epsilon"}],
                "stream": True,
            },
        )
    assert response.status_code == 200
    delivered = [
        orjson.loads(e.removeprefix("data: "))
        for e in response.text.split("\n\n")
        if e.startswith("data: {") and '"choices"' in e
    ]
    texts = [c["choices"][0]["delta"].get("content") for c in delivered if c["choices"]]
    assert len([t for t in texts if t]) == 2  # the role chunk, then two pieces: then the cut
    (row,) = await settled_rows(stack, tenant, requests=1)
    assert row["partial_requests"] == 1
    # No usage came from the upstream: the pieces delivered are the estimate, no prompt.
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (0, 2, 2)


async def test_a_stream_the_client_walked_away_from_records_what_was_delivered(
    stack: Any, tenant: AppWithConnection
) -> None:
    async with (
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            headers=chat_headers(tenant),
            json={
                "model": "openai/drip-300",
                "messages": [{"role": "user", "content": "alpha beta gamma delta epsilon"}],
                "stream": True,
            },
        ) as response,
    ):
        assert response.status_code == 200
        seen = 0
        async for line in response.aiter_lines():
            seen += '"content":"' in line and '"content":""' not in line
            if seen == 1:
                break
    (row,) = await settled_rows(stack, tenant, requests=1)
    assert row["partial_requests"] == 1
    assert 1 <= row["completion_tokens"] < 5


async def test_cached_and_reasoning_tokens_are_recorded_as_openai_reports_them(
    stack: Any, tenant: AppWithConnection
) -> None:
    client = sdk_client(stack, tenant)
    ask = [{"role": "user", "content": "one two"}]
    cached = await client.chat.completions.create(model="openai/cached-7", messages=ask)
    assert cached.usage is not None
    assert cached.usage.prompt_tokens_details is not None
    assert cached.usage.prompt_tokens_details.cached_tokens == 7
    stream = await client.chat.completions.create(
        model="openai/reasoning-3", messages=ask, stream=True
    )
    assert [chunk async for chunk in stream]
    rows = {row["model"]: row for row in await settled_rows(stack, tenant, requests=2)}
    assert rows["cached-7"]["cached_tokens"] == 7
    assert rows["cached-7"]["prompt_tokens"] == 2 + 7
    assert rows["cached-7"]["reasoning_tokens"] == 0
    assert rows["reasoning-3"]["reasoning_tokens"] == 3
    assert rows["reasoning-3"]["completion_tokens"] == 2 + 3
    assert rows["reasoning-3"]["cached_tokens"] == 0


async def test_anthropic_cache_reads_and_writes_are_recorded(
    stack: Any,
    claude_tenant: AppWithConnection,  # noqa: F811 (the imported fixture)
) -> None:
    client = sdk_client(stack, claude_tenant)
    for stream in (False, True):
        answer = await client.chat.completions.create(
            model="anthropic/cached-4",
            messages=[{"role": "user", "content": "one two"}],
            stream=stream,
        )
        if stream:
            assert [chunk async for chunk in answer]  # type: ignore[union-attr]
    (row,) = await settled_rows(stack, claude_tenant, requests=2)
    assert (row["cached_tokens"], row["cache_write_tokens"]) == (2 * 4, 2 * 8)
    assert row["prompt_tokens"] == 2 * (2 + 4 + 8)
