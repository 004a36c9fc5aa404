"""Where a key may go is sealed with it: a row pointed elsewhere in the database does not open.

The attacker here can write to the database but holds no key-encryption key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.aio.client import Client as NatsClient
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.keystore import connect_flow as cn
from byorouter_common.errors import ByoError
from tests.keystore.conftest import (
    KeystoreEnv,
    KeystoreProcess,
    new_app,
    new_connection,
    provider_key,
    wait_until_serving,
)

pytestmark = pytest.mark.usefixtures("keystore")

ATTACKER_URL = "https://collector.attacker.example/v1"
SELFHOSTED_URL = "http://127.0.0.1:11434/v1"


async def resolve(bus: Bus, app_id: str, connection_id: str) -> ks.ResolvedConnection:
    return await bus.request(
        ks.CREDENTIALS_RESOLVE, ks.ConnectionRef(app_id=app_id, connection_id=connection_id)
    )


async def refused_resolve(bus: Bus, app_id: str, connection_id: str, *keys: str) -> None:
    with pytest.raises(ByoError) as err:
        await resolve(bus, app_id, connection_id)
    assert (err.value.status, err.value.code) == (500, "credential_undecryptable")
    body = str(err.value.envelope())
    assert all(key not in body for key in keys)
    assert ATTACKER_URL not in body


async def execute(db: AsyncEngine, sql: str, **params: Any) -> None:
    async with db.begin() as conn:
        await conn.execute(text(sql), params)


@pytest.fixture
async def victim(bus: Bus) -> AsyncIterator[tuple[str, str, dict[str, str]]]:
    """(app id, connection id, keys by provider): openai with no base URL, selfhosted with one."""
    app = await new_app(bus)
    keys = {"openai": provider_key("sk-proj-"), "selfhosted": provider_key("lan-")}
    created = await new_connection(bus, app.app_id, **keys)
    yield app.app_id, created.connection_id, keys
    # A tampered row must not hold up other tests' key rotations.
    await bus.request(
        ks.CONNECTION_DELETE,
        ks.ConnectionRef(app_id=app.app_id, connection_id=created.connection_id),
    )


@pytest.mark.parametrize(
    ("provider", "change"),
    [
        ("openai", "base_url = :attacker"),
        ("selfhosted", "base_url = :attacker"),
        ("selfhosted", "base_url = NULL"),
        ("openai", "provider = 'openrouter'"),
        # Claiming the row predates binding v2 does not bring the weak binding back.
        ("openai", "binding_version = 1, base_url = :attacker"),
        ("openai", "binding_version = 3"),
    ],
)
async def test_a_credential_pointed_elsewhere_in_the_database_is_never_handed_out(
    bus: Bus,
    db: AsyncEngine,
    keystore: KeystoreProcess,
    victim: tuple[str, str, dict[str, str]],
    provider: str,
    change: str,
) -> None:
    app_id, connection_id, keys = victim
    assert len((await resolve(bus, app_id, connection_id)).providers) == 2

    await execute(
        db,
        f"UPDATE credentials SET {change} WHERE connection_id = :c AND provider = :p",  # noqa: S608 (the test's own SQL)
        attacker=ATTACKER_URL,
        c=connection_id,
        p=provider,
    )

    await refused_resolve(bus, app_id, connection_id, *keys.values())
    assert all(key not in keystore.log_text() for key in keys.values())


async def test_a_credential_pointed_at_a_planted_tunnel_is_never_handed_out(
    bus: Bus, db: AsyncEngine, victim: tuple[str, str, dict[str, str]]
) -> None:
    app_id, connection_id, keys = victim
    planted = "tun_" + secrets.token_hex(12)
    attacker_public_key = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    await execute(
        db,
        "INSERT INTO tunnels (id, app_id, connection_id, token_hash, public_key) "
        "VALUES (:t, :a, :c, :h, :k)",
        t=planted,
        a=app_id,
        c=connection_id,
        h=secrets.token_hex(32),
        k=attacker_public_key,
    )
    await execute(
        db,
        "UPDATE credentials SET tunnel_id = :t "
        "WHERE connection_id = :c AND provider = 'selfhosted'",
        t=planted,
        c=connection_id,
    )

    await refused_resolve(bus, app_id, connection_id, *keys.values())


async def test_an_app_default_pointed_elsewhere_in_the_database_is_never_handed_out(
    bus: Bus, db: AsyncEngine
) -> None:
    app = await new_app(bus)
    app_key = provider_key("sk-proj-")
    await bus.request(
        ks.APP_DEFAULT_SET,
        ks.AppDefaultSet(client_id=app.client_id, provider="openai", api_key=SecretStr(app_key)),
    )
    connection = await new_connection(bus, app.app_id, openai=provider_key("sk-proj-"))
    resolved = await resolve(bus, app.app_id, connection.connection_id)
    assert resolved.app_default is not None

    await execute(
        db,
        "UPDATE app_default_providers SET base_url = :attacker WHERE app_id = :a",
        attacker=ATTACKER_URL,
        a=app.app_id,
    )

    try:
        await refused_resolve(bus, app.app_id, connection.connection_id, app_key)
    finally:
        await bus.request(ks.APP_DEFAULT_CLEAR, ks.AppDefaultClear(client_id=app.client_id))


async def test_editing_the_base_url_or_key_on_the_manage_page_reseals_and_still_resolves(
    bus: Bus, victim: tuple[str, str, dict[str, str]]
) -> None:
    app_id, connection_id, keys = victim
    link = await bus.request(
        cn.MANAGE_LINK_CREATE, cn.ManageLinkCreate(app_id=app_id, connection_id=connection_id)
    )
    opened = await bus.request(cn.MANAGE_LINK_REDEEM, cn.ManageLinkRedeem(token=link.token))
    new_url, new_key = "http://10.0.0.7:8000/v1", provider_key("lan-")

    await bus.request(
        cn.PROVIDER_SET,
        cn.ProviderSet(
            session=opened.session,
            credential=ks.ProviderCredentialInput(
                provider="selfhosted", api_key=SecretStr(new_key), base_url=new_url
            ),
        ),
    )
    await bus.request(
        cn.PROVIDER_SET,
        cn.ProviderSet(
            session=opened.session,
            credential=ks.ProviderCredentialInput(
                provider="openai", api_key=SecretStr(keys["openai"] + "x")
            ),
        ),
    )

    resolved = await resolve(bus, app_id, connection_id)
    got = {
        p.provider: (p.base_url, p.api_key.get_secret_value() if p.api_key else None)
        for p in resolved.providers
    }
    assert got == {"openai": (None, keys["openai"] + "x"), "selfhosted": (new_url, new_key)}


async def test_changing_an_app_defaults_base_url_by_the_operator_reseals_it(bus: Bus) -> None:
    app = await new_app(bus)
    connection = await new_connection(bus, app.app_id, openai=provider_key("sk-proj-"))
    for url in (SELFHOSTED_URL, "http://10.0.0.8:8000/v1"):
        await bus.request(
            ks.APP_DEFAULT_SET,
            ks.AppDefaultSet(
                client_id=app.client_id, provider="selfhosted", base_url=url, model="llama"
            ),
        )
        resolved = await resolve(bus, app.app_id, connection.connection_id)
        assert resolved.app_default is not None
        assert resolved.app_default.base_url == url


# --- rows stored before binding v2 --------------------------------------------------------------


def seal_the_old_way(
    keyring_file: str, api_key: str, owner: str, provider: str
) -> tuple[int, bytes, bytes]:
    """What keystore stored before binding v2: only the owner and provider in the AAD."""
    keyring = json.loads(Path(keyring_file).read_text())
    version = int(keyring["active"])
    kek = base64.b64decode(keyring["keys"][str(version)])
    dek = AESGCM.generate_key(bit_length=256)

    def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)

    secret_aad = b"byorouter/credential/v1|" + f"{owner}|{provider}".encode()
    dek_aad = b"byorouter/dek/v1|" + f"{version}|{owner}|{provider}".encode()
    ciphertext = encrypt(dek, orjson.dumps({"api_key": api_key}), secret_aad)
    return version, encrypt(kek, dek, dek_aad), ciphertext


async def binding_versions(db: AsyncEngine, connection_id: str, app_id: str) -> list[int]:
    async with db.connect() as conn:
        credentials = await conn.scalars(
            text("SELECT binding_version FROM credentials WHERE connection_id = :c"),
            {"c": connection_id},
        )
        default = await conn.scalars(
            text("SELECT binding_version FROM app_default_providers WHERE app_id = :a"),
            {"a": app_id},
        )
        return [*credentials, *default]


async def test_a_row_stored_the_old_way_still_resolves_and_is_resealed_to_v2(
    bus: Bus, db: AsyncEngine, nc: NatsClient, keystore_env: KeystoreEnv
) -> None:
    app = await new_app(bus)
    user_key, app_key = provider_key("lan-"), provider_key("sk-proj-")
    created = await new_connection(bus, app.app_id, selfhosted=provider_key("lan-"))
    await bus.request(
        ks.APP_DEFAULT_SET,
        ks.AppDefaultSet(client_id=app.client_id, provider="openai", api_key=SecretStr(app_key)),
    )
    keyring_file = str(keystore_env.keyring_file)
    kek, wrapped, sealed = seal_the_old_way(
        keyring_file, user_key, created.connection_id, "selfhosted"
    )
    await execute(
        db,
        "UPDATE credentials SET binding_version = 1, kek_version = :k, wrapped_dek = :w, "
        "ciphertext = :s WHERE connection_id = :c",
        k=kek,
        w=wrapped,
        s=sealed,
        c=created.connection_id,
    )
    kek, wrapped, sealed = seal_the_old_way(
        keyring_file, app_key, f"app-default:{app.app_id}", "openai"
    )
    await execute(
        db,
        "UPDATE app_default_providers SET binding_version = 1, kek_version = :k, "
        "wrapped_dek = :w, ciphertext = :s WHERE app_id = :a",
        k=kek,
        w=wrapped,
        s=sealed,
        a=app.app_id,
    )
    assert await binding_versions(db, created.connection_id, app.app_id) == [1, 1]

    old = await resolve(bus, app.app_id, created.connection_id)
    assert old.providers[0].api_key is not None
    assert old.providers[0].api_key.get_secret_value() == user_key
    assert old.providers[0].base_url == SELFHOSTED_URL

    # Another copy starting (as after an upgrade) re-seals what it finds in the old binding.
    second = KeystoreProcess(keystore_env, "keystore-reseal")
    try:
        await wait_until_serving(nc, second, copies=2)
        deadline = time.monotonic() + 15
        while await binding_versions(db, created.connection_id, app.app_id) != [2, 2]:
            assert time.monotonic() < deadline, second.log_text()
            await asyncio.sleep(0.2)
    finally:
        second.stop()
    assert user_key not in second.log_text()
    assert app_key not in second.log_text()

    resolved = await resolve(bus, app.app_id, created.connection_id)
    [provider] = resolved.providers
    assert provider.api_key is not None
    assert (provider.api_key.get_secret_value(), provider.base_url) == (user_key, SELFHOSTED_URL)
    assert resolved.app_default is not None
    assert resolved.app_default.api_key is not None
    assert resolved.app_default.api_key.get_secret_value() == app_key

    # Re-sealed, the row's address is bound now: pointing it elsewhere no longer works.
    await execute(
        db,
        "UPDATE credentials SET base_url = :attacker WHERE connection_id = :c",
        attacker=ATTACKER_URL,
        c=created.connection_id,
    )
    try:
        await refused_resolve(bus, app.app_id, created.connection_id, user_key)
    finally:
        await bus.request(
            ks.CONNECTION_DELETE,
            ks.ConnectionRef(app_id=app.app_id, connection_id=created.connection_id),
        )
        await bus.request(ks.APP_DEFAULT_CLEAR, ks.AppDefaultClear(client_id=app.client_id))
