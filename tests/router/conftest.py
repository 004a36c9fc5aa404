"""Router tests: the real router, in-process, on a real NATS server, against the fake OpenAI.

Credentials come from a real keystore (`start_keystore`, a subprocess with its own database and
keyring): every connection a test uses is created through keystore's endpoints, and the router
resolves it over the bus exactly as in production. These tests run on their own NATS server
(`router_nats_url`) because their keystore must be the only one on its bus: another suite's
keystore (e.g. the whole-stack fixture on the session's `nats_url`) would answer some lookups
from a database that does not hold these connections.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client as NatsClient

from byorouter_cli.backends import NatsServer
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.service import ServiceRuntime
from byorouter_fakes.openai import FakeOpenAI
from byorouter_router.handlers import RouterHandlers
from byorouter_router.settings import RouterSettings
from tests.conftest import KeystoreProcess, StartKeystore
from tests.router.router_client import KEEPALIVE_S, READ_TIMEOUT_S, connect, provider


@pytest.fixture(scope="session")
def router_nats_url() -> Iterator[str]:
    server = NatsServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def upstream() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI(stream_chunks=5)
    await fake.start("127.0.0.1", 0)
    yield fake
    await fake.stop()


@pytest.fixture(scope="session")
async def client_nc(router_nats_url: str) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(router_nats_url, name="router-tests")
    yield nc
    await nc.drain()


@pytest.fixture(scope="session")
async def keystore(
    start_keystore: StartKeystore, router_nats_url: str
) -> AsyncIterator[KeystoreProcess]:
    process = await start_keystore(router_nats_url)
    try:
        yield process
    finally:
        process.stop()  # before its NATS server goes away


@pytest.fixture(scope="session")
def router_settings(router_nats_url: str) -> RouterSettings:
    return RouterSettings(
        NATS_URL=router_nats_url,
        allow_private_upstreams=True,
        upstream_connect_timeout_s=2.0,
        upstream_read_timeout_s=READ_TIMEOUT_S,
        request_deadline_s=5.0,
        # Short enough that a test sees a provider tried again after its cooldown.
        cooldown_s=3.0,
        keepalive_interval_s=KEEPALIVE_S,
        shutdown_grace_s=1.0,
    )


@pytest.fixture(scope="session")
async def router(
    router_settings: RouterSettings, keystore: KeystoreProcess
) -> AsyncIterator[RouterHandlers]:
    runtime = ServiceRuntime("router", router_settings, "router under test")
    handlers = RouterHandlers(runtime)
    handlers.register()
    await runtime.start()
    yield handlers
    await runtime.close()


@pytest.fixture(scope="session")
async def bus(client_nc: NatsClient, router: RouterHandlers) -> Bus:
    """The caller's side, as the gateway uses it; depends on `router` so it is running.

    Tests also make their apps and connections with it, through keystore, as the CLI does.
    """
    return Bus(client_nc, timeout_s=5.0, idle_timeout_s=10.0)


@pytest.fixture
async def openai_connection(bus: Bus, upstream: FakeOpenAI) -> tuple[ks.ConnectionRef, str]:
    """A connection whose OpenAI provider is the fake upstream; returns it and its user key."""
    key = "sk-user-" + secrets.token_hex(16)
    return await connect(bus, provider("openai", upstream.base_url, key)), key
