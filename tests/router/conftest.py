"""Router tests: the real router, in-process, on a real NATS server, against the fake OpenAI.

TEMPORARY STAND-IN FOR KEYSTORE (swap when keystore lands): `KeystoreStub` answers
`byorouter.keystore.credentials.resolve` on the bus with `ResolvedConnection`s the tests register,
because keystore was built in parallel with the router. To use the real keystore, replace the
`keystore` fixture by one that creates apps and connections through keystore's endpoints (as
tests/e2e/conftest.py does) and drop `KeystoreStub`. For the same reason these tests run on their
own NATS server (`router_nats_url`), so the stub can never answer for (or compete with) a real
keystore another suite may have running on the session's `nats_url`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from byorouter_cli.backends import NatsServer
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.service import ServiceRuntime
from byorouter_fakes.openai import FakeOpenAI
from byorouter_router.handlers import RouterHandlers
from byorouter_router.settings import RouterSettings
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from tests.router.router_client import KEEPALIVE_S, READ_TIMEOUT_S, KeystoreStub, provider


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
async def keystore(client_nc: NatsClient) -> KeystoreStub:
    stub = KeystoreStub()

    async def answer(msg: Msg) -> None:
        # One task per lookup, as concurrent lookups must be able to overlap.
        asyncio.get_running_loop().create_task(stub.answer(client_nc, msg))

    await client_nc.subscribe(ks.CREDENTIALS_RESOLVE.subject, queue="keystore", cb=answer)
    return stub


@pytest.fixture(scope="session")
def router_settings(router_nats_url: str) -> RouterSettings:
    return RouterSettings(
        NATS_URL=router_nats_url,
        allow_private_upstreams=True,
        upstream_connect_timeout_s=2.0,
        upstream_read_timeout_s=READ_TIMEOUT_S,
        request_deadline_s=5.0,
        keepalive_interval_s=KEEPALIVE_S,
        shutdown_grace_s=1.0,
    )


@pytest.fixture(scope="session")
async def router(
    router_settings: RouterSettings, keystore: KeystoreStub
) -> AsyncIterator[RouterHandlers]:
    runtime = ServiceRuntime("router", router_settings, "router under test")
    handlers = RouterHandlers(runtime, router_settings)
    handlers.register()
    await runtime.start()
    await handlers.start()
    yield handlers
    await handlers.stop()
    await runtime.close()


@pytest.fixture(scope="session")
async def bus(client_nc: NatsClient, router: RouterHandlers) -> Bus:
    """The caller's side, as the gateway uses it; depends on `router` so it is running."""
    return Bus(client_nc, timeout_s=5.0, idle_timeout_s=10.0)


@pytest.fixture
def openai_connection(keystore: KeystoreStub, upstream: FakeOpenAI) -> tuple[ks.ConnectionRef, str]:
    """A connection whose OpenAI provider is the fake upstream; returns it and its user key."""
    key = "sk-user-" + secrets.token_hex(16)
    return keystore.add([provider("openai", upstream.base_url, key)]), key
