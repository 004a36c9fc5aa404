"""Upstream failures, unknown models and connections, each as the error an app would see."""

from __future__ import annotations

import time

import pytest
from pydantic import SecretStr

from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.errors import ByoError
from byorouter_fakes.openai import FakeOpenAI
from byorouter_router.providers.base import ProviderCredential
from byorouter_router.providers.errors import Timeouts
from byorouter_router.providers.openai_compat import OpenAICompatProvider
from byorouter_router.settings import RouterSettings
from byorouter_router.upstream import create_session
from tests.router.router_client import (
    READ_TIMEOUT_S,
    Collected,
    chat,
    connect,
    new_app,
    provider,
)


def _body(model: str, stream: bool = False) -> dict[str, object]:
    return {
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "one two three four five six"}],
    }


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_rate_limit_is_429_with_its_retry_after(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str], stream: bool
) -> None:
    ref, _ = openai_connection
    answer = await chat(bus, ref, _body("openai/fail-429", stream))
    assert answer.kinds == ["error"], "nothing may start before the upstream accepted"
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (429, "upstream_rate_limited")
    assert answer.error.retry_after == 1.0
    assert "Rate limit reached" in answer.error.message


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_server_error_is_502(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str], stream: bool
) -> None:
    ref, _ = openai_connection
    answer = await chat(bus, ref, _body("openai/fail-500", stream))
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (502, "upstream_error")


async def test_rejected_provider_key_is_provider_auth_failed_without_the_key(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, user_key = openai_connection
    answer = await chat(bus, ref, _body("openai/fail-401"))
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (502, "provider_auth_failed")
    assert answer.error.message == (
        "The openai key on this connection was rejected by the provider (401)."
    )
    assert user_key not in answer.error.to_json().decode()


async def test_upstream_bad_request_passes_its_message_on_as_400(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = openai_connection
    answer = await chat(bus, ref, _body("openai/fail-400"))
    assert answer.error is not None
    assert answer.error.status == 400
    assert "Invalid 'messages'" in answer.error.message
    assert answer.error.param == "messages"


async def test_upstream_unknown_model_is_model_not_found(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = openai_connection
    answer = await chat(bus, ref, _body("openai/fail-404"))
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (404, "model_not_found")


async def test_flat_error_body_of_a_selfhosted_server_is_understood(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    ref = await connect(bus, provider("selfhosted", upstream.base_url))
    answer = await chat(bus, ref, _body("selfhosted/flat-500", stream=True))
    assert answer.error is not None
    assert answer.error.status == 502
    assert "model runner failed" in answer.error.message


@pytest.mark.parametrize("stream", [False, True])
async def test_silent_upstream_is_504_after_the_read_timeout(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str], stream: bool
) -> None:
    ref, _ = openai_connection
    began = time.monotonic()
    answer = await chat(bus, ref, _body("openai/hang", stream))
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (504, "upstream_timeout")
    assert time.monotonic() - began < READ_TIMEOUT_S + 3


async def test_upstream_that_stalls_mid_stream_ends_with_504_after_its_chunks(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = openai_connection
    answer = await chat(bus, ref, _body("openai/stall-after-2", stream=True))
    assert answer.kinds[0] == "start"
    assert "chunk" in answer.kinds
    assert answer.kinds[-1] == "error"
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (504, "upstream_timeout")


@pytest.mark.parametrize("model", ["cut-after-3", "error-after-3", "garbage-after-3"])
async def test_broken_stream_ends_with_an_error_after_the_chunks_never_done(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str], model: str
) -> None:
    ref, _ = openai_connection
    answer = await chat(bus, ref, _body(f"openai/{model}", stream=True))
    assert answer.kinds[0] == "start"
    assert len(answer.events) == 3, "every complete event before the break is delivered"
    assert "done" not in answer.kinds
    assert answer.kinds[-1] == "error"
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (502, "upstream_error")


@pytest.mark.parametrize(
    "model", ["nope/gpt-4o", "gpt-4o", "anthropic/claude-3-5-sonnet-20241022", "openai/", ""]
)
async def test_model_the_connection_cannot_serve_is_404_naming_its_providers(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str], model: str
) -> None:
    ref, _ = openai_connection
    answer = await chat(bus, ref, _body(model))
    assert answer.error is not None
    if model == "":
        assert answer.error.status == 400
        return
    assert (answer.error.status, answer.error.code) == (404, "model_not_found")
    assert "This connection has: openai." in answer.error.message


async def test_unknown_connection_and_another_apps_connection_are_the_same_404(
    bus: Bus, openai_connection: tuple[ks.ConnectionRef, str]
) -> None:
    ref, _ = openai_connection
    other_app = ks.ConnectionRef(app_id=await new_app(bus), connection_id=ref.connection_id)
    missing = ks.ConnectionRef(app_id=ref.app_id, connection_id="conn_" + "0" * 24)
    errors = []
    for candidate in (other_app, missing):
        answer = await chat(bus, candidate, _body("openai/gpt-4o-mini"))
        assert answer.error is not None
        errors.append((answer.error.status, answer.error.code, answer.error.message))
    assert errors[0] == errors[1]
    assert errors[0][0] == 404


async def test_selfhosted_provider_without_base_url_is_refused_clearly(bus: Bus) -> None:
    # Keystore will not store one; should such a credential ever reach the router (an older
    # row, another keystore version), the router refuses it too rather than guess a URL.
    with pytest.raises(ByoError) as refused:
        await connect(bus, provider("selfhosted", None, "k-1234567890"))
    assert (refused.value.status, refused.value.param) == (400, "providers[0].base_url")

    session = create_session(RouterSettings(allow_private_upstreams=True))
    try:
        selfhosted = OpenAICompatProvider(
            "selfhosted", session, Timeouts(2, 2, 5), default_base_url=None, allow_private=True
        )
        credential = ProviderCredential("selfhosted", SecretStr("k-1234567890"), None)
        reply = Collected()
        with pytest.raises(ByoError) as caught:
            await selfhosted.chat(credential, "llama3", {"messages": []}, reply, deadline=1e12)
    finally:
        await session.close()
    assert (caught.value.status, caught.value.code) == (400, "provider_misconfigured")
    assert reply.kinds == []


async def test_unreachable_upstream_is_502_upstream_unreachable(bus: Bus) -> None:
    from byorouter_cli.backends import free_port

    ref = await connect(bus, provider("selfhosted", f"http://127.0.0.1:{free_port()}/v1"))
    answer = await chat(bus, ref, _body("selfhosted/llama3", stream=True))
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (502, "upstream_unreachable")
