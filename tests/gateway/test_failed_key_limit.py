"""Guessing app keys: refusals are counted per client IP, and only a trusted proxy names the IP.

A gateway of its own joins the session stack's bus (its keystore and router), allowing 3 refused
keys a minute per IP and trusting forwarded headers from 127.0.0.2 only. Requests come from two
loopback addresses: 127.0.0.1, which uvicorn would trust by default, and the configured proxy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from tests.gateway.gateway_client import Tenant, authenticate_calls, forged_key

ALLOWED_FAILURES = 3
PROXY = "127.0.0.2"


@pytest.fixture(scope="module")
def guarded_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(
        tmp_path_factory.mktemp("guarded-gateway") / ".byorouter",
        nats_url=stack.nats_url,
        services=("gateway",),
        upstream=False,
        env_overrides={"BYOROUTER_LOG_FORMAT": "text"},
        service_env={
            "gateway": {
                "BYOROUTER_AUTH_FAILURES_PER_IP_PER_MIN": str(ALLOWED_FAILURES),
                "BYOROUTER_TRUSTED_PROXIES": f"{PROXY}/32",
            }
        },
    ).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def client_from(guarded_gateway: Stack) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """One client per loopback source address."""
    clients = {
        address: httpx.AsyncClient(
            base_url=guarded_gateway.gateway_url,
            transport=httpx.AsyncHTTPTransport(local_address=address),
            timeout=10,
        )
        for address in ("127.0.0.1", PROXY)
    }
    yield clients
    for client in clients.values():
        await client.aclose()


def guess(forwarded_for: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {forged_key()}"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    return headers


async def test_forged_forwarded_for_does_not_reset_the_failure_budget(
    client_from: dict[str, httpx.AsyncClient], bus: Bus, tenant: Tenant
) -> None:
    direct = client_from["127.0.0.1"]
    before = await authenticate_calls(bus.nc)
    for i in range(ALLOWED_FAILURES):
        refused = await direct.get("/v1/models", headers=guess(f"203.0.113.{i + 1}"))
        assert refused.status_code == 401
    assert await authenticate_calls(bus.nc) == before + ALLOWED_FAILURES

    # A "new" client IP in X-Forwarded-For from an untrusted peer is the same client.
    limited = await direct.get("/v1/models", headers=guess("203.0.113.99"))
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    error = limited.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == "rate_limit_error"
    assert "invalid API key" in error["message"]
    assert "param" in error
    # Even a real key is not looked up from that IP until the budget refills.
    assert (await direct.get("/v1/models", headers=tenant.headers)).status_code == 429
    assert await authenticate_calls(bus.nc) == before + ALLOWED_FAILURES

    # Another IP is unaffected: its guesses are still looked up and refused as such.
    other = await client_from[PROXY].get("/v1/models", headers=guess())
    assert other.status_code == 401
    assert await authenticate_calls(bus.nc) == before + ALLOWED_FAILURES + 1


async def test_a_trusted_proxy_names_the_client_each_limit_counts(
    client_from: dict[str, httpx.AsyncClient], bus: Bus, tenant: Tenant
) -> None:
    proxy = client_from[PROXY]
    for _ in range(ALLOWED_FAILURES):
        refused = await proxy.get("/v1/models", headers=guess("198.51.100.7"))
        assert refused.status_code == 401
    assert (await proxy.get("/v1/models", headers=guess("198.51.100.7"))).status_code == 429
    # The proxy's other clients are counted on their own, and successes cost nothing.
    assert (await proxy.get("/v1/models", headers=guess("198.51.100.8"))).status_code == 401
    forwarded = {**tenant.headers, "X-Forwarded-For": "198.51.100.9"}
    for _ in range(ALLOWED_FAILURES + 1):
        assert (await proxy.get("/v1/models", headers=forwarded)).status_code == 200
