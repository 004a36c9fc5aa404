"""Credentials are cached per connection and dropped the moment keystore says they changed.

The keystore is the real one; how often the router asked it is read from keystore's own NATS
micro stats (`$SRV.STATS.keystore`, endpoint `credentials_resolve`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from nats.aio.client import Client as NatsClient
from sqlalchemy.engine import make_url

from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_fakes.openai import FakeOpenAI
from tests.conftest import KeystoreProcess
from tests.router.router_client import (
    ChatAnswer,
    chat,
    connect,
    credential_lookups,
    new_app,
    provider,
)

BODY = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}]}


def _conninfo(keystore: KeystoreProcess) -> str:
    """A libpq URL of keystore's database (no SQLAlchemy driver suffix)."""
    url = make_url(keystore.env.database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


@asynccontextmanager
async def _keystore_database_held(keystore: KeystoreProcess) -> AsyncIterator[None]:
    """Keystore's credential reads wait until the block is left, as on a busy database."""
    async with await psycopg.AsyncConnection.connect(_conninfo(keystore)) as db, db.transaction():
        await db.execute("LOCK TABLE credentials IN ACCESS EXCLUSIVE MODE")
        yield  # leaving the transaction releases the lock, and keystore answers


async def _until_keystore_waits(keystore: KeystoreProcess, within_s: float = 5.0) -> None:
    """Until a keystore lookup is waiting for the held table."""
    async with await psycopg.AsyncConnection.connect(_conninfo(keystore), autocommit=True) as db:
        deadline = time.monotonic() + within_s
        while True:
            cursor = await db.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted"
                " AND relation = 'credentials'::regclass"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            row = await cursor.fetchone()
            if row is not None and row[0] > 0:
                return
            assert time.monotonic() < deadline, f"no credential lookup within {within_s}s"
            await asyncio.sleep(0.02)


async def _until_refused(bus: Bus, ref: ks.ConnectionRef, within_s: float = 1.0) -> ChatAnswer:
    # The change event and the next request travel different paths; allow the event a moment.
    deadline = time.monotonic() + within_s
    while (answer := await chat(bus, ref, BODY)).error is None:
        assert time.monotonic() < deadline, f"connection still served after {within_s}s"
        await asyncio.sleep(0.02)
    return answer


async def test_repeated_requests_ask_keystore_once(
    bus: Bus, client_nc: NatsClient, upstream: FakeOpenAI
) -> None:
    ref = await connect(bus, provider("openai", upstream.base_url, "sk-a-" + secrets.token_hex(8)))
    before = await credential_lookups(client_nc)
    for _ in range(3):
        assert (await chat(bus, ref, BODY)).kinds == ["start", "result"]
    assert await credential_lookups(client_nc) == before + 1


async def test_concurrent_first_requests_share_one_keystore_lookup(
    bus: Bus, client_nc: NatsClient, keystore: KeystoreProcess, upstream: FakeOpenAI
) -> None:
    ref = await connect(bus, provider("openai", upstream.base_url, "sk-b-" + secrets.token_hex(8)))
    before = await credential_lookups(client_nc)
    async with _keystore_database_held(keystore):
        answers = asyncio.gather(*(chat(bus, ref, BODY) for _ in range(8)))
        await _until_keystore_waits(keystore)
        # Keystore answers nothing while held: every request reaches the router meanwhile.
        await asyncio.sleep(0.2)
    assert all(a.kinds == ["start", "result"] for a in await answers)
    assert await credential_lookups(client_nc) == before + 1


async def test_deleted_connection_is_refused_at_once_though_it_was_cached(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    ref = await connect(bus, provider("openai", upstream.base_url, "sk-c-" + secrets.token_hex(8)))
    for _ in range(2):
        assert (await chat(bus, ref, BODY)).kinds == ["start", "result"]
    await bus.request(ks.CONNECTION_DELETE, ref)
    answer = await _until_refused(bus, ref)
    assert answer.kinds == ["error"]
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (404, "connection_not_found")


async def test_key_replaced_by_reconnecting_is_used_at_once_and_the_old_one_never_again(
    bus: Bus, upstream: FakeOpenAI
) -> None:
    old_key, new_key = "sk-old-" + secrets.token_hex(8), "sk-new-" + secrets.token_hex(8)
    app_id = await new_app(bus)
    tag = "rotate-" + secrets.token_hex(6)
    old = await connect(bus, provider("openai", upstream.base_url, old_key), app_id=app_id)
    assert (await chat(bus, old, {**BODY, "user": tag})).kinds == ["start", "result"]

    await bus.request(ks.CONNECTION_DELETE, old)
    new = await connect(bus, provider("openai", upstream.base_url, new_key), app_id=app_id)
    assert (await chat(bus, new, {**BODY, "user": tag})).kinds == ["start", "result"]
    refused = await _until_refused(bus, old)

    assert refused.error is not None
    assert refused.error.status == 404
    seen = [r["headers"]["Authorization"] for r in upstream.requests(tag)]
    assert seen == [f"Bearer {old_key}", f"Bearer {new_key}"]
