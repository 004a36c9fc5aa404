"""Connect's Test goes through the router's SSRF guard: without private upstreams allowed, no
Test reaches loopback, private or link-local addresses, whichever provider it names.

The router runs as it is deployed (`python -m byorouter_router`, private upstreams off) on a bus
of its own, with the fake OpenAI listening on loopback; Test requests come as Connect sends
them, over the bus.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from pydantic import SecretStr

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus, connect
from byorouter_common.contracts import router as rt


@pytest.fixture(scope="module")
def public_only_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(
        tmp_path_factory.mktemp("public-only-router") / ".byorouter",
        services=("router",),
        env_overrides={"BYOROUTER_LOG_FORMAT": "text"},
        service_env={"router": {"BYOROUTER_ALLOW_PRIVATE_UPSTREAMS": "false"}},
    ).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def as_connect(public_only_router: Stack) -> AsyncIterator[Bus]:
    nc = await connect(public_only_router.nats_settings("connect"), "guard-tests")
    yield Bus(nc, timeout_s=15.0)
    await nc.close()


def _port(stack: Stack) -> int:
    port = stack.upstream_base_url.rsplit(":", 1)[1].split("/")[0]
    return int(port)


@pytest.mark.parametrize(
    ("provider", "base_url"),
    [
        ("openai", "http://127.0.0.1:{port}/v1"),
        ("selfhosted", "http://127.0.0.1:{port}/v1"),
        ("selfhosted", "http://169.254.169.254/latest"),
        ("selfhosted", "http://localhost:{port}/v1"),  # a name that resolves to loopback
        ("selfhosted", "http://[::ffff:127.0.0.1]:{port}/v1"),
        ("anthropic", "http://10.1.2.3/v1"),
        ("openrouter", "http://127.0.0.1:{port}/api/v1"),
    ],
)
async def test_a_test_of_a_private_address_is_refused(
    public_only_router: Stack, as_connect: Bus, provider: str, base_url: str
) -> None:
    url = base_url.format(port=_port(public_only_router))
    result = await as_connect.request(
        rt.PROVIDER_TEST,
        rt.ProviderTest(provider=provider, api_key=SecretStr("sk-test-123456"), base_url=url),
    )
    assert result.ok is False
    assert "does not call private or local addresses" in result.message
    assert result.model_count == 0


async def test_the_same_server_answers_a_router_that_allows_private_upstreams(
    stack: Stack,
) -> None:
    """The refusal above is the guard's: the session stack allows private upstreams."""
    nc = await connect(stack.nats_settings("connect"), "guard-tests")
    try:
        result = await Bus(nc, timeout_s=15.0).request(
            rt.PROVIDER_TEST,
            rt.ProviderTest(provider="selfhosted", base_url=stack.upstream_base_url),
        )
    finally:
        await nc.close()
    assert result.ok is True, result.message
