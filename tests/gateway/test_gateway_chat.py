"""POST /v1/chat/completions: what an app sees, streamed and not, when things go right and wrong.

The router here is the contract-speaking stand-in of conftest.py (the real one is being built).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson

from tests.gateway.conftest import (
    FakeRouter,
    RunningGateway,
    Tenant,
    chat_body,
    start_gateway,
    tag,
)


async def test_non_streamed_answer_is_the_providers_json_byte_for_byte(
    http: httpx.AsyncClient, tenant: Tenant, router: FakeRouter
) -> None:
    t = tag()
    response = await http.post(
        "/v1/chat/completions", headers=tenant.headers, json=chat_body(content="hi there", user=t)
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "echo: hi there"
    # Fields the gateway knows nothing about still reach the client.
    assert body["system_fingerprint"] == "fp_passthrough"
    assert response.headers["x-byorouter-provider"] == "openai"
    assert response.headers["x-byorouter-attempts"] == "2"
    seen = router.chats[t]
    assert seen.request.app_id
    assert seen.request.connection_id == tenant.connection_id
    assert seen.request.body == chat_body(content="hi there", user=t)
    assert seen.byo_request_id == response.headers["x-request-id"]


async def test_stream_is_server_sent_events_ending_with_done(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await http.post(
        "/v1/chat/completions",
        headers=tenant.headers,
        json=chat_body(content="one two", stream=True, stream_options={"include_usage": True}),
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["x-byorouter-provider"] == "openai"
    assert response.text.endswith("\n\ndata: [DONE]\n\n")
    events = response.text.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    chunks = [orjson.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    # Four chunks: the second bus message carried three lines, each became its own event.
    assert len(chunks) == 4
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: one two"
    assert chunks[-1]["usage"]["total_tokens"] == 7


async def test_failure_after_stream_started_is_an_error_event_without_done(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await http.post(
        "/v1/chat/completions",
        headers=tenant.headers,
        json=chat_body("test/error-after-start", stream=True),
    )
    assert response.status_code == 200
    events = [e for e in response.text.split("\n\n") if e]
    assert "[DONE]" not in response.text
    assert orjson.loads(events[0].removeprefix("data: "))["object"] == "chat.completion.chunk"
    error = orjson.loads(events[-1].removeprefix("data: "))["error"]
    assert error["status"] == 502
    assert error["code"] == "upstream_error"


async def test_failure_before_start_is_an_http_error_for_streams_too(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    for stream in (False, True):
        response = await http.post(
            "/v1/chat/completions",
            headers=tenant.headers,
            json=chat_body("test/not-connected", stream=stream),
        )
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["code"] == "model_not_found"
        assert response.headers["x-should-retry"] == "false"


async def test_upstream_rate_limit_passes_retry_after(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    for stream in (False, True):
        response = await http.post(
            "/v1/chat/completions",
            headers=tenant.headers,
            json=chat_body("test/rate-limited", stream=stream),
        )
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["type"] == "rate_limit_error"
        # 429 is worth retrying: the SDK must not be told otherwise.
        assert "x-should-retry" not in response.headers


async def test_no_router_running_is_503_within_a_second(
    http: httpx.AsyncClient, tenant: Tenant, router: FakeRouter
) -> None:
    await http.post("/v1/chat/completions", headers=tenant.headers, json=chat_body())  # key cached
    async with router.stopped():
        started = time.monotonic()
        response = await http.post(
            "/v1/chat/completions", headers=tenant.headers, json=chat_body(stream=True)
        )
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["error"]["status"] == 503
    assert elapsed < 1.0


async def _cancelled_within_a_second(router: FakeRouter, t: str) -> None:
    deadline = time.monotonic() + 1.0
    while t not in router.chats:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    request_id = router.chats[t].request.request_id
    event = router.cancelled.setdefault(request_id, asyncio.Event())
    await asyncio.wait_for(event.wait(), max(0.01, deadline - time.monotonic()))


async def test_client_leaving_mid_stream_cancels_the_upstream_call(
    gateway: RunningGateway, tenant: Tenant, router: FakeRouter
) -> None:
    t = tag()
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            headers=tenant.headers,
            json=chat_body("test/drip", stream=True, user=t),
        ) as response,
    ):
        assert response.status_code == 200
        async for _ in response.aiter_bytes():
            break  # the first tokens arrived; now the user closes the tab
    await _cancelled_within_a_second(router, t)


async def test_client_giving_up_on_a_plain_answer_cancels_the_upstream_call(
    gateway: RunningGateway, tenant: Tenant, router: FakeRouter
) -> None:
    t = tag()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=0.3) as client:
        try:
            await client.post(
                "/v1/chat/completions",
                headers=tenant.headers,
                json=chat_body("test/slow-result", user=t),
            )
        except httpx.ReadTimeout:
            pass
        else:
            raise AssertionError("the slow answer should not have arrived")
    await _cancelled_within_a_second(router, t)


async def test_finished_stream_sends_no_cancel(
    http: httpx.AsyncClient, tenant: Tenant, router: FakeRouter
) -> None:
    t = tag()
    response = await http.post(
        "/v1/chat/completions", headers=tenant.headers, json=chat_body(stream=True, user=t)
    )
    assert response.text.endswith("data: [DONE]\n\n")
    await asyncio.sleep(0.1)
    request_id = router.chats[t].request.request_id
    assert not router.cancelled[request_id].is_set()


async def test_client_chosen_request_id_is_echoed_but_never_shared_on_the_bus(
    http: httpx.AsyncClient, tenant: Tenant, router: FakeRouter
) -> None:
    ids = []
    for _ in range(2):
        t = tag()
        response = await http.post(
            "/v1/chat/completions",
            headers={**tenant.headers, "X-Request-Id": "my-trace_1"},
            json=chat_body(user=t),
        )
        assert response.headers["x-request-id"] == "my-trace_1"
        assert router.chats[t].byo_request_id == "my-trace_1"
        ids.append(router.chats[t].request.request_id)
    # Cancelling one must never cancel the other: their ids on the bus differ.
    assert ids[0] != ids[1]


async def test_request_larger_than_the_bus_accepts_is_413(
    gateway_nats_url: str, router: FakeRouter, tenant: Tenant
) -> None:
    roomy = await start_gateway(gateway_nats_url, max_body_bytes=4 * 1024 * 1024)
    try:
        async with httpx.AsyncClient(base_url=roomy.url, timeout=10) as client:
            response = await client.post(
                "/v1/chat/completions",
                headers=tenant.headers,
                json=chat_body(content="x" * (1024 * 1024 + 10)),
            )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
    finally:
        await roomy.stop()
