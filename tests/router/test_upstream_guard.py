"""Without `allow_private_upstreams`, a base URL that leads to a private address is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from pydantic import SecretStr

from byorouter_common.errors import ByoError
from byorouter_fakes.openai import FakeOpenAI
from byorouter_router.providers.base import ProviderCredential
from byorouter_router.providers.errors import Timeouts
from byorouter_router.providers.openai_compat import OpenAICompatProvider
from byorouter_router.settings import RouterSettings
from byorouter_router.upstream import create_session, is_public_address
from tests.router.router_client import Collected


@pytest.fixture
async def guarded_session() -> AsyncIterator[aiohttp.ClientSession]:
    session = create_session(RouterSettings(allow_private_upstreams=False))
    yield session
    await session.close()


def _provider(session: aiohttp.ClientSession, allow_private: bool) -> OpenAICompatProvider:
    return OpenAICompatProvider(
        "selfhosted", session, Timeouts(2, 2, 5), default_base_url=None, allow_private=allow_private
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "10.0.0.8", "169.254.169.254"])
async def test_private_base_url_is_refused_before_any_request(
    guarded_session: aiohttp.ClientSession, upstream: FakeOpenAI, host: str
) -> None:
    credential = ProviderCredential(
        "selfhosted", SecretStr("k-123456789"), f"http://{host}:{upstream.port}/v1"
    )
    reply = Collected()
    with pytest.raises(ByoError) as caught:
        await _provider(guarded_session, False).chat(
            credential, "llama3", {"messages": []}, reply, deadline=1e12
        )
    assert (caught.value.status, caught.value.code) == (400, "upstream_not_allowed")
    assert host not in caught.value.message
    assert reply.kinds == []


async def test_private_base_url_is_called_when_allowed(upstream: FakeOpenAI) -> None:
    session = create_session(RouterSettings(allow_private_upstreams=True))
    try:
        credential = ProviderCredential("selfhosted", None, f"http://localhost:{upstream.port}/v1")
        reply = Collected()
        await _provider(session, True).chat(
            credential,
            "llama3",
            {"messages": [{"role": "user", "content": "x"}]},
            reply,
            deadline=1e12,
        )
        assert reply.kinds == ["start", "result"]
    finally:
        await session.close()


def test_only_global_unicast_addresses_count_as_public() -> None:
    assert is_public_address("8.8.8.8")
    assert is_public_address("2606:4700:4700::1111")
    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ):
        assert not is_public_address(address), address
