"""Chat requests that succeed, driven through the real bus protocol as the gateway drives them."""

from __future__ import annotations

import asyncio
import secrets

import orjson

from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_fakes.openai import FakeOpenAI
from tests.router.router_client import chat, connect, provider

MESSAGE = "the quick brown fox jumps over the lazy dog"


def _body(model: str = "openai/gpt-4o-mini", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": MESSAGE}], **extra}


async def test_streamed_answer_arrives_in_order_and_done_carries_usage(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = openai_connection
    answer = await chat(bus, ref, _body(stream=True, stream_options={"include_usage": True}))
    assert answer.error is None
    assert answer.kinds[0] == "start"
    assert answer.kinds[-1] == "done"
    assert set(answer.kinds[1:-1]) == {"chunk"}
    assert answer.start == {"provider": "openai", "model": "gpt-4o-mini", "attempts": 1}
    assert answer.text == MESSAGE
    assert all(e["object"] == "chat.completion.chunk" for e in answer.events)
    assert answer.end is not None
    assert answer.end["finish_reason"] == "stop"
    assert answer.end["usage"]["completion_tokens"] == len(MESSAGE.split())
    assert answer.end["usage"]["prompt_tokens"] == len(MESSAGE.split())


async def test_streamed_answer_without_usage_request_has_no_usage(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = openai_connection
    answer = await chat(bus, ref, _body(stream=True))
    assert answer.text == MESSAGE
    # No chunk the client gets carries usage; the router still learned it (for usage records).
    assert all("usage" not in event and event["choices"] for event in answer.events)
    assert answer.end is not None
    assert answer.end["finish_reason"] == "stop"
    assert answer.end["usage"]["completion_tokens"] > 0


async def test_plain_answer_is_the_upstream_completion_unchanged(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = openai_connection
    answer = await chat(bus, ref, _body())
    assert answer.kinds == ["start", "result"]
    assert answer.end is not None
    assert answer.end["object"] == "chat.completion"
    assert answer.end["choices"][0]["message"]["content"] == MESSAGE
    assert answer.end["usage"]["total_tokens"] > 0


async def test_upstream_gets_the_users_key_and_its_own_model_id(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str], upstream: FakeOpenAI
) -> None:
    ref, user_key = openai_connection
    tag = "tag-" + secrets.token_hex(6)
    for stream in (False, True):
        await chat(bus, ref, _body(user=tag, stream=stream))
    seen = upstream.requests(tag)
    assert len(seen) == 2
    for request in seen:
        assert request["headers"]["Authorization"] == f"Bearer {user_key}"
        # The provider prefix is BYORouter's; the upstream sees its own model id.
        assert request["body"]["model"] == "gpt-4o-mini"
        assert request["body"]["messages"] == [{"role": "user", "content": MESSAGE}]
        assert ref.app_id not in orjson.dumps(request).decode()


async def test_selfhosted_provider_without_key_sends_no_authorization(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    ref = await connect(bus, provider("selfhosted", upstream.base_url))
    tag = "tag-" + secrets.token_hex(6)
    answer = await chat(bus, ref, _body("selfhosted/llama3", user=tag, stream=True))
    assert answer.text == MESSAGE
    assert answer.start is not None
    assert answer.start["provider"] == "selfhosted"
    [request] = upstream.requests(tag)
    assert "Authorization" not in request["headers"]
    assert request["body"]["model"] == "llama3"


async def test_model_ids_with_slashes_keep_everything_after_the_prefix(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    ref = await connect(bus, provider("selfhosted", upstream.base_url, "k-1234567890"))
    tag = "tag-" + secrets.token_hex(6)
    await chat(bus, ref, _body("selfhosted/meta-llama/Llama-3.1-8B", user=tag))
    [request] = upstream.requests(tag)
    assert request["body"]["model"] == "meta-llama/Llama-3.1-8B"


async def test_quiet_upstream_still_keeps_the_stream_alive(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str]
) -> None:
    # The caller gives up after 0.6 s of silence; the upstream takes 1.2 s to start, so only
    # the router's keep-alives (every 0.2 s here) let the answer arrive.
    ref, _ = openai_connection
    answer = await chat(bus, ref, _body("openai/slow-1200", stream=True), idle_timeout_s=0.6)
    assert answer.error is None
    assert answer.text == MESSAGE


async def test_many_concurrent_requests_each_get_their_own_answer(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = openai_connection

    async def one(i: int) -> str:
        body = {
            "model": "openai/gpt-4o-mini",
            "stream": i % 2 == 0,
            "messages": [{"role": "user", "content": f"request number {i}"}],
        }
        answer = await chat(bus, ref, body)
        if answer.kinds[-1] == "result":
            assert answer.end is not None
            return str(answer.end["choices"][0]["message"]["content"])
        return answer.text

    texts = await asyncio.gather(*(one(i) for i in range(40)))
    assert texts == [f"request number {i}" for i in range(40)]
