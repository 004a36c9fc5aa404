"""A real keystore process on its own bus and its own database, and helpers to talk to it.

The keystore under test (`start_keystore` from tests/conftest.py) gets a private NATS server
(from the same nats-server wheel) and a fresh database in the session's PostgreSQL: the rotation
tests rewrite its keyring, and another keystore copy with a different keyring on the same bus or
tables (e.g. a whole-stack fixture still running) would answer some requests or hold rows it
cannot read.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from byorouter_cli.backends import NatsServer
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.base import Event

# Re-exported: the keystore test modules import these from here.
from tests.conftest import KeystoreEnv as KeystoreEnv
from tests.conftest import KeystoreProcess as KeystoreProcess
from tests.conftest import StartKeystore
from tests.conftest import keystore_stats as keystore_stats
from tests.conftest import run_keystore_command as run_keystore_command
from tests.conftest import wait_until_serving as wait_until_serving


@pytest.fixture(scope="session")
def keystore_nats_url() -> Iterator[str]:
    server = NatsServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def keystore(
    start_keystore: StartKeystore, keystore_nats_url: str
) -> AsyncIterator[KeystoreProcess]:
    process = await start_keystore(keystore_nats_url)
    try:
        yield process
    finally:
        process.stop()  # before its NATS server goes away


@pytest.fixture(scope="session")
def keystore_env(keystore: KeystoreProcess) -> KeystoreEnv:
    return keystore.env


@pytest.fixture(scope="session")
async def nc(keystore_nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(keystore_nats_url)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def bus(nc: NatsClient) -> Bus:
    return Bus(nc, timeout_s=10)


@pytest.fixture(scope="session")
async def db(keystore_env: KeystoreEnv) -> AsyncIterator[AsyncEngine]:
    """Direct access to the keystore's tables, to check what is actually stored."""
    engine = create_async_engine(keystore_env.database_url)
    yield engine
    await engine.dispose()


class EventListener:
    """Collects every event published on one subject, to assert what keystore announced."""

    def __init__(self, event: Event[Any]) -> None:
        self.event = event
        self.received: asyncio.Queue[Any] = asyncio.Queue()
        self._sub: Any = None

    async def start(self, nc: NatsClient) -> EventListener:
        async def collect(msg: Any) -> None:
            self.received.put_nowait(self.event.payload.model_validate_json(msg.data))

        self._sub = await nc.subscribe(self.event.subject, cb=collect)
        await nc.flush()
        return self

    async def next(self, within_s: float = 1.0) -> Any:
        return await asyncio.wait_for(self.received.get(), within_s)

    async def stop(self) -> None:
        await self._sub.unsubscribe()


def provider_key(family: str = "sk-") -> str:
    return family + "test" + secrets.token_urlsafe(24)


async def new_app(bus: Bus, name: str = "test app") -> ks.AppCreated:
    return await bus.request(
        ks.APP_CREATE, ks.AppCreate(name=name, redirect_uris=["http://localhost:3000/callback"])
    )


async def new_connection(bus: Bus, app_id: str, **keys: str) -> ks.ConnectionInfo:
    """A connection with one provider per keyword (provider=api_key), in the order given."""
    providers = [
        ks.ProviderCredentialInput(
            provider=provider,
            api_key=SecretStr(key),
            base_url="http://127.0.0.1:11434/v1" if provider == "selfhosted" else None,
        )
        for provider, key in keys.items()
    ]
    return await bus.request(
        ks.CONNECTION_CREATE, ks.ConnectionCreate(app_id=app_id, providers=providers)
    )
