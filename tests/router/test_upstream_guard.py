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
from byorouter_router.upstream import create_session, endpoints_for, is_public_address
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


# Spellings of a private address that HTTP libraries and resolvers accept but `ipaddress` does not.
NON_CANONICAL_IPV4 = ["127.1", "2130706433", "0x7f.1", "017700000001", "0177.0.0.1", "127.0.0.1."]
# IPv6 addresses that carry a private IPv4 address inside them.
IPV6_EMBEDDING_PRIVATE_IPV4 = [
    "[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
    "[64:ff9b::10.0.0.8]",  # NAT64 of 10.0.0.8
    "[2002:7f00:1::1]",  # 6to4 of 127.0.0.1
    "[2002:a9fe:a9fe::]",  # 6to4 of 169.254.169.254
    "[::127.0.0.1]",  # IPv4-compatible
    "[::10.0.0.8]",
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:a9fe:a9fe]",
]


@pytest.mark.parametrize("host", NON_CANONICAL_IPV4 + IPV6_EMBEDDING_PRIVATE_IPV4)
def test_disguised_private_address_is_refused_when_parsed(host: str) -> None:
    with pytest.raises(ByoError) as caught:
        endpoints_for("selfhosted", f"http://{host}:8000/v1", False)
    assert (caught.value.status, caught.value.code) == (400, "upstream_not_allowed")
    assert host not in caught.value.message


@pytest.mark.parametrize("host", NON_CANONICAL_IPV4 + IPV6_EMBEDDING_PRIVATE_IPV4)
def test_disguised_private_address_is_accepted_when_private_upstreams_are_allowed(
    host: str,
) -> None:
    endpoints = endpoints_for("selfhosted", f"http://{host}:8000/v1", True)
    assert endpoints.chat.path == "/v1/chat/completions"


@pytest.mark.parametrize(
    "host",
    [
        "8.8.8.8",
        "[2606:4700:4700::1111]",
        "[64:ff9b::8.8.8.8]",
        "[2002:808:808::1]",
        "[::ffff:8.8.8.8]",
        "api.openai.com",
        "api.openai.com.",
        "1e100.net",
    ],
)
def test_public_address_or_host_name_passes_the_parse_time_check(host: str) -> None:
    endpoints = endpoints_for("openai", f"https://{host}/v1", False)
    assert endpoints.models.path == "/v1/models"


@pytest.mark.parametrize(
    "address", ["64:ff9b::7f00:1", "2002:7f00:1::1", "::7f00:1", "::ffff:10.0.0.8"]
)
def test_resolved_ipv6_embedding_a_private_ipv4_is_not_public(address: str) -> None:
    assert not is_public_address(address)
