"""Several keystore copies on one bus and database: a rotation one copy missed never loses keys.

Prune removes a key-encryption key only once every live copy has confirmed the newest one, and a
copy that knows of a newer key than it holds seals nothing with the old one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.base import Empty
from byorouter_common.errors import ByoError
from byorouter_keystore.crypto import KeyringStore
from byorouter_keystore.db import session_factory
from byorouter_keystore.keys import prune_keys, rotate_keys
from tests.keystore.conftest import (
    KeystoreEnv,
    KeystoreProcess,
    keystore_stats,
    new_app,
    new_connection,
    provider_key,
    wait_until_serving,
)
from tests.keystore.test_keys import resolve_all, stored_secrets, until_every_copy_handled

pytestmark = pytest.mark.usefixtures("keystore")

Owned = dict[str, tuple[str, dict[str, str]]]


async def add_connection(bus: Bus, app_id: str, owned: Owned) -> None:
    keys = {"openai": provider_key("sk-proj-")}
    created = await new_connection(bus, app_id, **keys)
    owned[created.connection_id] = (app_id, keys)


def byorouter(keystore_env: KeystoreEnv, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's CLI against this keystore's bus."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BYOROUTER_", "NATS_"))}
    return subprocess.run(
        [sys.executable, "-m", "byorouter_cli.main", *args],
        env={**env, "NATS_URL": keystore_env.nats_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def confirmed_versions(db: AsyncEngine) -> dict[str, int]:
    async with db.connect() as conn:
        rows = await conn.execute(text("SELECT copy_id, active_kek_version FROM keystore_copies"))
        return {r.copy_id: r.active_kek_version for r in rows}


async def until_copies_confirm(db: AsyncEngine, version: int, copies: int) -> None:
    deadline = time.monotonic() + 10
    while list((await confirmed_versions(db)).values()).count(version) < copies:
        assert time.monotonic() < deadline, await confirmed_versions(db)
        await asyncio.sleep(0.1)


async def test_prune_refuses_while_a_copy_holds_an_older_keyring_and_no_credential_is_lost(
    bus: Bus, nc: NatsClient, keystore_env: KeystoreEnv, tmp_path: Path
) -> None:
    app = await new_app(bus)
    owned: Owned = {}
    await add_connection(bus, app.app_id, owned)
    # A copy on another host whose keyring file never got the rotation.
    stale_file = tmp_path / "stale" / "keyring.json"
    stale_file.parent.mkdir(mode=0o700)
    stale_file.write_text(keystore_env.keyring_file.read_text())
    stale_file.chmod(0o600)
    rotated = await bus.request(ks.KEYS_ROTATE, Empty(), timeout_s=30)
    lagging = KeystoreProcess(replace(keystore_env, keyring_file=stale_file), "keystore-stale")
    removed: list[int] = []
    refusals: list[ByoError] = []
    stores_refused: list[ByoError] = []

    async def prune() -> None:
        try:
            pruned = await bus.request(ks.KEYS_PRUNE, Empty(), timeout_s=30)
            removed.extend(pruned.removed_versions)
        except ByoError as exc:
            refusals.append(exc)

    async def store() -> None:
        try:
            await add_connection(bus, app.app_id, owned)
        except ByoError as exc:
            stores_refused.append(exc)

    try:
        await wait_until_serving(nc, lagging, copies=2)
        since = await keystore_stats(nc)
        # Both copies answer prune and store requests: the queue group picks one at random.
        await until_every_copy_handled(nc, since, "keys_prune", prune)
        await until_every_copy_handled(nc, since, "connection_create", store)
        # The operator's view: the CLI says why nothing was pruned and which copy is behind.
        cli_prune = await asyncio.to_thread(byorouter, keystore_env, "keys", "prune")
        cli_status = await asyncio.to_thread(byorouter, keystore_env, "keys", "status")
    finally:
        lagging.stop()

    # What a user would notice first: every stored key still opens, on the copy that remains.
    await resolve_all(bus, owned)
    assert removed == []
    assert refusals
    for refusal in refusals:
        assert refusal.status == 409
        assert refusal.code == "keystore_copies_behind"
        assert "1 of 2 keystore copies" in refusal.message
        assert f"v{rotated.active_version}" in refusal.message
    assert cli_prune.returncode == 1
    assert "1 of 2 keystore copies have not confirmed" in cli_prune.stderr
    assert cli_status.returncode == 0, cli_status.stderr
    assert "BEHIND: blocks prune" in cli_status.stdout
    # The lagging copy would not seal with the old key; it said why instead.
    assert stores_refused
    assert {e.code for e in stores_refused} == {"keyring_behind"}
    assert all(e.status == 503 for e in stores_refused)

    # With the lagging copy stopped (its registration goes with it), prune goes ahead.
    pruned = await bus.request(ks.KEYS_PRUNE, Empty(), timeout_s=30)
    assert rotated.active_version - 1 in pruned.removed_versions
    await resolve_all(bus, owned)


async def test_a_paused_copy_blocks_prune_until_it_has_confirmed_the_new_key(
    bus: Bus, nc: NatsClient, db: AsyncEngine, keystore_env: KeystoreEnv
) -> None:
    paused = KeystoreProcess(keystore_env, "keystore-paused")
    sessions = session_factory(db)
    # What another copy does, in this process: rotate and re-wrap, and its event gets lost.
    operator = KeyringStore.from_file(keystore_env.keyring_file)
    app = await new_app(bus)
    owned: Owned = {}
    try:
        await wait_until_serving(nc, paused, copies=2)
        since = await keystore_stats(nc)
        await until_every_copy_handled(
            nc, since, "connection_create", lambda: add_connection(bus, app.app_id, owned)
        )
        os.kill(paused.process.pid, signal.SIGSTOP)
        try:

            async def event_lost(_: int) -> None:
                return None

            new_version, _ = await rotate_keys(sessions, operator, 2, event_lost)
            # The running copy sees the changed file by itself and confirms the new key.
            await until_copies_confirm(db, new_version, copies=1)

            with pytest.raises(ByoError) as refused:
                async with sessions.begin() as session:
                    await prune_keys(session, operator, lease_s=60)
            assert refused.value.code == "keystore_copies_behind"
            assert "1 of 2 keystore copies" in refused.value.message
            assert len(operator.current.versions) > 1
        finally:
            os.kill(paused.process.pid, signal.SIGCONT)

        # Awake again, the paused copy reads the file without any event and confirms.
        await until_copies_confirm(db, new_version, copies=2)
        async with sessions.begin() as session:
            removed = await prune_keys(session, operator, lease_s=60)
        assert new_version - 1 in removed
        since = await keystore_stats(nc)
        await until_every_copy_handled(
            nc, since, "connection_create", lambda: add_connection(bus, app.app_id, owned)
        )
    finally:
        paused.stop()

    await resolve_all(bus, owned)
    assert {version for version, _, _ in (await stored_secrets(db)).values()} == {new_version}
    # A copy that stops cleanly takes its registration with it, so it blocks no later prune.
    assert len(await confirmed_versions(db)) == 1
