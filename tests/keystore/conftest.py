"""A real keystore process on its own bus and its own database, and helpers to talk to it.

The keystore under test gets a private NATS server (from the same nats-server wheel) and a fresh
database in the session's PostgreSQL: the rotation tests rewrite its keyring, and another
keystore copy with a different keyring on the same bus or tables (e.g. a whole-stack fixture
still running) would answer some requests or hold rows it cannot read.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import orjson
import psycopg
import pytest
from byorouter_cli.backends import NatsServer
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.base import Event
from nats.aio.client import Client as NatsClient
from pydantic import SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


@dataclass(frozen=True)
class KeystoreEnv:
    nats_url: str
    database_url: str
    keyring_file: Path
    log_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BYOROUTER_")}
        env.update(
            NATS_URL=self.nats_url,
            DATABASE_URL=self.database_url,
            BYOROUTER_KEYRING_FILE=str(self.keyring_file),
            BYOROUTER_LOG_FORMAT="text",
            # Small batches so a rotation in the tests crosses several transactions.
            BYOROUTER_REWRAP_BATCH_SIZE="2",
        )
        env.update(extra)
        return env


def run_keystore_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "byorouter_keystore", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _admin_conninfo(database_url: str) -> str:
    """A libpq URL for psycopg itself (no SQLAlchemy driver suffix)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _create_database(database_url: str) -> str:
    """A new empty database on the same server, so these tests own every row they see."""
    name = "keystore_test_" + secrets.token_hex(4)
    with psycopg.connect(_admin_conninfo(database_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # the name is ours: hex only
    return make_url(database_url).set(database=name).render_as_string(hide_password=False)


def _drop_database(database_url: str, test_database_url: str) -> None:
    name = make_url(test_database_url).database
    with psycopg.connect(_admin_conninfo(database_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def keystore_env(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KeystoreEnv]:
    base = tmp_path_factory.mktemp("keystore")
    nats_server = NatsServer().start()
    try:
        test_database_url = _create_database(database_url)
    except BaseException:
        nats_server.stop()
        raise
    env = KeystoreEnv(nats_server.url, test_database_url, base / "keyring.json", base)
    try:
        for command in ("migrate", "init-keyring"):
            done = run_keystore_command(env.env(), command)
            assert done.returncode == 0, done.stderr
        yield env
    finally:
        nats_server.stop()
        _drop_database(database_url, env.database_url)


class KeystoreProcess:
    """One `python -m byorouter_keystore` process; its log is kept to check it for secrets."""

    def __init__(self, env: KeystoreEnv, name: str) -> None:
        self.log_file = env.log_dir / f"{name}.log"
        self._log = open(self.log_file, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "byorouter_keystore"],
            env=env.env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


async def keystore_stats(nc: NatsClient, *, listen_s: float = 0.3) -> dict[str, dict[str, int]]:
    """Requests handled so far per running keystore copy: {copy id: {endpoint: count}}."""
    inbox = nc.new_inbox()
    replies: list[Any] = []

    async def collect(msg: Any) -> None:
        replies.append(orjson.loads(msg.data))

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish("$SRV.STATS.keystore", b"", reply=inbox)
        await asyncio.sleep(listen_s)  # every copy answers; gather whoever did
    finally:
        await sub.unsubscribe()
    return {r["id"]: {e["name"]: e["num_requests"] for e in r["endpoints"]} for r in replies}


async def wait_until_serving(
    nc: NatsClient, process: KeystoreProcess, copies: int = 1, within_s: float = 20
) -> None:
    """Until `copies` keystore processes answer discovery (so each has its handlers up)."""
    deadline = time.monotonic() + within_s
    while len(await keystore_stats(nc, listen_s=0.1)) < copies:
        assert process.process.poll() is None, process.log_text()
        assert time.monotonic() < deadline, f"keystore not serving after {within_s}s"


@pytest.fixture(scope="session")
async def nc(keystore_env: KeystoreEnv) -> AsyncIterator[NatsClient]:
    client = await nats.connect(keystore_env.nats_url)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def bus(nc: NatsClient) -> Bus:
    return Bus(nc, timeout_s=10)


@pytest.fixture(scope="session")
async def keystore(keystore_env: KeystoreEnv, nc: NatsClient) -> AsyncIterator[KeystoreProcess]:
    process = KeystoreProcess(keystore_env, "keystore")
    try:
        await wait_until_serving(nc, process)
        yield process
    finally:
        process.stop()


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
