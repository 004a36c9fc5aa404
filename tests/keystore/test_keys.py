"""Key-encryption keys: rotation re-wraps every data key, pruning drops unused versions."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from byorouter_common.bus import Bus
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.base import Empty
from byorouter_common.errors import ByoError
from byorouter_keystore.crypto import KeyringStore
from tests.keystore.conftest import (
    EventListener,
    KeystoreEnv,
    KeystoreProcess,
    keystore_stats,
    new_app,
    new_connection,
    provider_key,
    run_keystore_command,
    wait_until_serving,
)

pytestmark = pytest.mark.usefixtures("keystore")


async def resolve_all(bus: Bus, owned: dict[str, tuple[str, dict[str, str]]]) -> None:
    """Every connection still resolves to exactly the keys it was created with."""
    for connection_id, (app_id, keys) in owned.items():
        resolved = await bus.request(
            ks.CREDENTIALS_RESOLVE, ks.ConnectionRef(app_id=app_id, connection_id=connection_id)
        )
        assert {
            p.provider: p.api_key.get_secret_value() for p in resolved.providers if p.api_key
        } == keys


async def until_every_copy_handled(
    nc: NatsClient,
    since: dict[str, dict[str, int]],
    endpoint: str,
    step: Callable[[], Awaitable[None]],
) -> None:
    for _ in range(60):
        await step()
        now = await keystore_stats(nc, listen_s=0.1)
        if all(now[copy][endpoint] > since[copy][endpoint] for copy in since):
            return
    pytest.fail(f"{endpoint} requests never reached every keystore copy")


async def stored_secrets(db: AsyncEngine) -> dict[str, tuple[int, bytes, bytes]]:
    async with db.connect() as conn:
        rows = await conn.execute(
            text("SELECT id, kek_version, wrapped_dek, ciphertext FROM credentials")
        )
        return {r.id: (r.kek_version, bytes(r.wrapped_dek), bytes(r.ciphertext)) for r in rows}


async def test_rotation_rewraps_every_credential_and_prune_drops_the_old_key(
    bus: Bus, db: AsyncEngine, nc: NatsClient, keystore_env: KeystoreEnv
) -> None:
    owned: dict[str, tuple[str, dict[str, str]]] = {}
    for _ in range(3):
        app = await new_app(bus)
        keys = {"openai": provider_key("sk-proj-"), "anthropic": provider_key("sk-ant-")}
        created = await new_connection(bus, app.app_id, **keys)
        owned[created.connection_id] = (app.app_id, keys)
    before = await bus.request(ks.KEYS_STATUS, Empty())
    secrets_before = await stored_secrets(db)

    listener = await EventListener(events.KEYRING_ROTATED).start(nc)
    try:
        rotated = await bus.request(ks.KEYS_ROTATE, Empty(), timeout_s=30)
        event = await listener.next(within_s=1.0)
    finally:
        await listener.stop()

    assert rotated.active_version == before.active_version + 1
    assert event.active_version == rotated.active_version
    assert rotated.rewrapped == len(secrets_before)
    await resolve_all(bus, owned)
    secrets_after = await stored_secrets(db)
    assert {version for version, _, _ in secrets_after.values()} == {rotated.active_version}
    # Only the data keys' wrapping changed; the encrypted keys themselves are untouched.
    for row_id, (_, wrapped, ciphertext) in secrets_after.items():
        assert ciphertext == secrets_before[row_id][2]
        assert wrapped != secrets_before[row_id][1]

    pruned = await bus.request(ks.KEYS_PRUNE, Empty())

    assert before.active_version in pruned.removed_versions
    keyring = json.loads(keystore_env.keyring_file.read_text())
    assert keyring["active"] == rotated.active_version
    assert list(keyring["keys"]) == [str(rotated.active_version)]
    assert keystore_env.keyring_file.stat().st_mode & 0o777 == 0o600
    await resolve_all(bus, owned)
    status = await bus.request(ks.KEYS_STATUS, Empty())
    assert status.versions == [rotated.active_version]
    assert status.credentials_by_version == {str(rotated.active_version): len(secrets_after)}


async def test_a_second_copy_follows_a_rotation_made_by_the_first(
    bus: Bus, nc: NatsClient, db: AsyncEngine, keystore_env: KeystoreEnv
) -> None:
    second = KeystoreProcess(keystore_env, "keystore-second")
    try:
        await wait_until_serving(nc, second, copies=2)
        app = await new_app(bus)
        owned: dict[str, tuple[str, dict[str, str]]] = {}

        async def add_connection() -> None:
            keys = {"openai": provider_key("sk-proj-")}
            created = await new_connection(bus, app.app_id, **keys)
            owned[created.connection_id] = (app.app_id, keys)

        for _ in range(4):
            await add_connection()
        rotated = await bus.request(ks.KEYS_ROTATE, Empty(), timeout_s=30)
        # The queue group spreads requests over both copies at random: keep going until each
        # copy has stored, then resolved, credentials since the rotation, whichever one rotated.
        # Stores come first, so a copy can only know the new key from the rotation event.
        since = await keystore_stats(nc)
        assert len(since) == 2
        await until_every_copy_handled(nc, since, "connection_create", add_connection)
        await until_every_copy_handled(
            nc, since, "credentials_resolve", lambda: resolve_all(bus, owned)
        )
    finally:
        second.stop()

    assert "keystore ready" in second.log_text()
    versions = {version for version, _, _ in (await stored_secrets(db)).values()}
    assert versions == {rotated.active_version}


def test_keystore_refuses_to_start_without_its_keyring_file(keystore_env: KeystoreEnv) -> None:
    missing = keystore_env.log_dir / "no-such-keyring.json"

    done = run_keystore_command(keystore_env.env(BYOROUTER_KEYRING_FILE=str(missing)))

    assert done.returncode != 0
    assert "init-keyring" in done.stderr
    assert not missing.exists()


async def test_an_inline_keyring_cannot_be_rotated(keystore_env: KeystoreEnv) -> None:
    store = KeyringStore.from_inline(keystore_env.keyring_file.read_text())

    with pytest.raises(ByoError) as err:
        await store.rotate()

    assert err.value.code == "keyring_not_rotatable"
    assert "keyring file" in err.value.message
