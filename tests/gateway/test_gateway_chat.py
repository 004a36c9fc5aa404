"""POST /v1/chat/completions: what an app sees, streamed and not, when things go right and wrong.

Answers come from the real router calling the fake OpenAI upstream; a model name such as
`openai/error-after-2` makes the upstream fail in that way. What the upstream received and which
requests it saw abandoned are read back from it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
from nats.aio.msg import Msg

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from byorouter_common.contracts import router as rt
from tests.e2e.conftest import upstream_requests
from tests.gateway.gateway_client import (
    Tenant,
    chat_body,
    chunks_of,
    new_tenant,
    sse_events,
    tag,
    upstream_disconnects,
    wait_for_upstream_disconnect,
)


async def test_non_streamed_answer_is_the_providers_json_with_unknown_fields_kept(
    http: httpx.AsyncClient, tenant: Tenant, stack: Stack
) -> None:
    t = tag()
    sent = chat_body(content="hi there", user=t, temperature=0.2)
    response = await http.post("/v1/chat/completions", headers=tenant.headers, json=sent)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "hi there"
    # Fields the gateway knows nothing about still reach the client.
    assert body["system_fingerprint"] == "fp_fake"
    assert body["service_tier"] == "default"
    assert body["choices"][0]["message"]["refusal"] is None
    assert response.headers["x-byorouter-provider"] == "openai"
    assert response.headers["x-byorouter-attempts"] == "1"
    # The provider got the app's body as sent, with its own model id.
    seen = await upstream_requests(stack, t)
    assert [s["body"] for s in seen] == [{**sent, "model": "gpt-4o-mini"}]


async def test_stream_is_server_sent_events_ending_with_done(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await http.post(
        "/v1/chat/completions",
        headers=tenant.headers,
        json=chat_body(
            content="one two three", stream=True, stream_options={"include_usage": True}
        ),
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["x-byorouter-provider"] == "openai"
    # The upstream delivered the whole answer in one burst; each event still stands alone.
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = chunks_of(events)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "one two three"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


@pytest.mark.parametrize(
    ("model", "says"), [("openai/error-after-2", "error"), ("openai/cut-after-2", "broke off")]
)
async def test_failure_after_stream_started_is_an_error_event_without_done(
    http: httpx.AsyncClient, tenant: Tenant, model: str, says: str
) -> None:
    response = await http.post(
        "/v1/chat/completions", headers=tenant.headers, json=chat_body(model, stream=True)
    )
    assert response.status_code == 200
    events = sse_events(response.text)
    assert "[DONE]" not in events
    assert [c["object"] for c in chunks_of(events[:-1])] == ["chat.completion.chunk"] * 2
    error = orjson.loads(events[-1])["error"]
    assert error["status"] == 502
    assert error["code"] == "upstream_error"
    assert says in error["message"]


async def test_failure_before_start_is_an_http_error_for_streams_too(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    for stream in (False, True):
        response = await http.post(
            "/v1/chat/completions",
            headers=tenant.headers,
            json=chat_body("anthropic/claude-3-5-haiku-latest", stream=stream),
        )
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["code"] == "model_not_found"
        assert response.headers["x-should-retry"] == "false"


async def test_upstream_rate_limit_passes_retry_after_and_stays_retryable(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    for stream in (False, True):
        response = await http.post(
            "/v1/chat/completions",
            headers=tenant.headers,
            json=chat_body("openai/fail-429", stream=stream),
        )
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["type"] == "rate_limit_error"
        # 429 is worth retrying: the SDK must not be told otherwise.
        assert "x-should-retry" not in response.headers


async def test_client_giving_up_on_a_plain_answer_cancels_the_upstream_call(
    stack: Stack, tenant: Tenant
) -> None:
    t = tag()
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(
                "/v1/chat/completions",
                headers=tenant.headers,
                json=chat_body("openai/hang", user=t),
            )
    await wait_for_upstream_disconnect(stack, t)


async def test_finished_stream_sends_no_cancel(
    http: httpx.AsyncClient, tenant: Tenant, bus: Bus, stack: Stack
) -> None:
    t = tag()
    # Watch the real bus (plain subscriptions, outside the router's queue group).
    relayed: dict[str, str] = {}
    cancels: list[str] = []

    async def on_chat(msg: Msg) -> None:
        request: dict[str, Any] = orjson.loads(msg.data)
        relayed[str(request["body"].get("user"))] = request["request_id"]

    async def on_cancel(msg: Msg) -> None:
        cancels.append(msg.subject.removeprefix(rt.CANCEL_PREFIX + "."))

    subs = [
        await bus.nc.subscribe(rt.CHAT.subject, cb=on_chat),
        await bus.nc.subscribe(rt.CANCEL_PREFIX + ".>", cb=on_cancel),
    ]
    try:
        response = await http.post(
            "/v1/chat/completions", headers=tenant.headers, json=chat_body(stream=True, user=t)
        )
        assert sse_events(response.text)[-1] == "[DONE]"
        await asyncio.sleep(0.2)  # a cancel would be published right after the response ends
    finally:
        for sub in subs:
            await sub.unsubscribe()
    assert t in relayed
    assert relayed[t] not in cancels
    assert await upstream_disconnects(stack, t) == 0


async def test_same_client_request_id_on_two_streams_cancels_only_the_abandoned_one(
    stack: Stack, tenant: Tenant
) -> None:
    """A client may reuse its X-Request-Id; leaving one stream must not cut the other."""
    kept, left = tag(), tag()
    headers = {**tenant.headers, "X-Request-Id": "my-trace_1"}
    # 20 words, one event each, 50 ms apart: the kept stream runs for about a second.
    words = " ".join(f"w{n}" for n in range(20))
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
        whole = asyncio.create_task(
            client.post(
                "/v1/chat/completions",
                headers=headers,
                json=chat_body("openai/drip-50", words, stream=True, user=kept),
            )
        )
        deadline = time.monotonic() + 5.0
        while not await upstream_requests(stack, kept):  # the kept stream is under way
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            headers=headers,
            json=chat_body("openai/drip-50", words, stream=True, user=left),
        ) as response:
            assert response.headers["x-request-id"] == "my-trace_1"
            async for _ in response.aiter_bytes():
                break  # the first tokens arrived; now this user closes the tab
        await wait_for_upstream_disconnect(stack, left)
        finished = await whole
    assert finished.headers["x-request-id"] == "my-trace_1"
    events = sse_events(finished.text)
    assert events[-1] == "[DONE]"
    chunks = chunks_of(events)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == words


async def test_request_larger_than_one_bus_message_arrives_whole(
    tuned_stack: Stack, tuned_bus: Bus
) -> None:
    # Past the 1 MiB one NATS message carries: the request crosses in parts, and the fake's
    # echo, as large, comes back in pieces. Neither is cut.
    tenant = await new_tenant(tuned_bus, tuned_stack)
    content = "x" * (tuned_bus.nc.max_payload + 10)
    async with httpx.AsyncClient(base_url=tuned_stack.gateway_url, timeout=30) as client:
        response = await client.post(
            "/v1/chat/completions", headers=tenant.headers, json=chat_body(content=content)
        )
    assert response.status_code == 200, response.text[:300]
    assert response.json()["choices"][0]["message"]["content"] == content
