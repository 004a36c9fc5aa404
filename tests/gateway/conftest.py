"""The gateway as it really runs: `python -m byorouter_gateway` with the real keystore and router.

Most tests use the session's whole `stack` (tests/conftest.py) and a fresh app and connection
made through its keystore. Tests that need the gateway configured otherwise, or a dependency
taken away, use `tuned_stack`: keystore, router and gateway on their own NATS server and their own
database, so stopping its services never disturbs the shared stack. Its gateway allows each app
only 2 requests at once, then one every 2 s, so every test there uses fresh apps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus, connect
from byorouter_common.settings import ServiceSettings
from tests.conftest import create_database, drop_database
from tests.gateway.gateway_client import Tenant, new_tenant

TUNED_GATEWAY_ENV = {
    "BYOROUTER_RATE_LIMIT_RPS": "0.5",
    "BYOROUTER_RATE_LIMIT_BURST": "2",
    # Past what NATS carries in one message (1 MiB): a large body crosses the bus in parts.
    "BYOROUTER_MAX_BODY_BYTES": str(4 * 1024 * 1024),
    "BYOROUTER_ACCESS_LOG": "true",
}


@pytest.fixture(scope="session")
async def bus(stack: Stack) -> AsyncIterator[Bus]:
    nc = await connect(ServiceSettings(NATS_URL=stack.nats_url), "gateway-tests")
    yield Bus(nc)
    await nc.close()


@pytest.fixture
async def tenant(bus: Bus, stack: Stack) -> Tenant:
    return await new_tenant(bus, stack)


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="session")
def tuned_stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("gateway-stack") / ".byorouter"
    owned_database = create_database(database_url, "gateway")
    running = Stack(
        state_dir,
        database_url=owned_database,  # no nats_url: the stack starts a NATS server of its own
        services=("keystore", "router", "gateway"),
        env_overrides={
            "BYOROUTER_LOG_LEVEL": "DEBUG",
            "BYOROUTER_LOG_FORMAT": "text",
            "BYOROUTER_OTEL_EXPORTER": "console",
        },
        service_env={"gateway": TUNED_GATEWAY_ENV},
    ).start()
    try:
        yield running
    finally:
        running.stop()
        drop_database(database_url, owned_database)


@pytest.fixture(scope="session")
async def tuned_bus(tuned_stack: Stack) -> AsyncIterator[Bus]:
    nc = await connect(tuned_stack.nats_settings(), "gateway-tests")
    yield Bus(nc)
    await nc.close()
