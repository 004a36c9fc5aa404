"""Apps and app API keys: a key is shown once, stored as a hash, and stops working when revoked."""

from __future__ import annotations

import hashlib
import re

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from byorouter_common.bus import Bus
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.errors import ByoError
from tests.keystore.conftest import EventListener, KeystoreProcess, new_app

pytestmark = pytest.mark.usefixtures("keystore")

APP_KEY = re.compile(r"^byo_sk_([a-z0-9]{12})_[A-Za-z0-9]{43}$")


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def test_new_app_gets_a_working_key_that_is_stored_only_as_a_hash(
    bus: Bus, db: AsyncEngine
) -> None:
    app = await new_app(bus, "Acme notes")
    key = app.app_api_key.get_secret_value()

    match = APP_KEY.match(key)
    assert match is not None
    assert match.group(1) == app.key_id
    assert app.key_label == f"byo_sk_{app.key_id}_...{key[-4:]}"
    assert app.app_id.startswith("app_")
    assert app.client_id.startswith("cli_")
    principal = await bus.request(
        ks.APP_AUTHENTICATE, ks.AppAuthenticate(key_id=app.key_id, key_hash=sha256_hex(key))
    )
    assert (principal.app_id, principal.client_id, principal.name) == (
        app.app_id,
        app.client_id,
        "Acme notes",
    )
    async with db.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT key_hash, label FROM app_keys WHERE key_id = :k"), {"k": app.key_id}
            )
        ).one()
    assert bytes(stored.key_hash).hex() == sha256_hex(key)
    assert key not in stored.label


async def test_app_lookup_by_client_id_shows_redirect_uris_exactly_and_no_key(bus: Bus) -> None:
    uris = ["http://localhost:3000/callback", "https://app.example/cb?x=1"]
    app = await bus.request(ks.APP_CREATE, ks.AppCreate(name="exact", redirect_uris=uris))

    info = await bus.request(ks.APP_GET, ks.AppGet(client_id=app.client_id))

    assert info.redirect_uris == uris
    assert info.app_id == app.app_id
    assert app.app_api_key.get_secret_value() not in info.model_dump_json()


async def test_unknown_client_id_is_not_found(bus: Bus) -> None:
    with pytest.raises(ByoError) as err:
        await bus.request(ks.APP_GET, ks.AppGet(client_id="cli_doesnotexist00000000"))
    assert (err.value.status, err.value.code) == (404, "app_not_found")


async def test_wrong_secret_and_unknown_key_id_get_the_same_401(bus: Bus) -> None:
    app = await new_app(bus)
    key = app.app_api_key.get_secret_value()
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")

    failures = []
    for key_id, key_hash in (
        (app.key_id, sha256_hex(tampered)),
        ("zzzzzzzzzzzz", sha256_hex(key)),
    ):
        with pytest.raises(ByoError) as err:
            await bus.request(
                ks.APP_AUTHENTICATE, ks.AppAuthenticate(key_id=key_id, key_hash=key_hash)
            )
        failures.append(err.value.envelope())

    assert failures[0] == failures[1]
    assert failures[0]["error"]["status"] == 401


async def test_revoked_key_is_refused_announced_and_other_keys_keep_working(
    bus: Bus, nc: object
) -> None:
    app = await new_app(bus)
    first = app.app_api_key.get_secret_value()
    second = await bus.request(ks.APP_KEY_CREATE, ks.AppKeyCreate(client_id=app.client_id))
    listener = await EventListener(events.APP_KEY_REVOKED).start(nc)  # type: ignore[arg-type]
    try:
        revoked = await bus.request(ks.APP_KEY_REVOKE, ks.AppKeyRevoke(key_id=app.key_id))
        event = await listener.next(within_s=1.0)
    finally:
        await listener.stop()

    assert revoked.app_id == app.app_id
    assert (event.key_id, event.app_id) == (app.key_id, app.app_id)
    with pytest.raises(ByoError) as err:
        await bus.request(
            ks.APP_AUTHENTICATE, ks.AppAuthenticate(key_id=app.key_id, key_hash=sha256_hex(first))
        )
    assert err.value.status == 401
    principal = await bus.request(
        ks.APP_AUTHENTICATE,
        ks.AppAuthenticate(
            key_id=second.key_id, key_hash=sha256_hex(second.app_api_key.get_secret_value())
        ),
    )
    assert principal.app_id == app.app_id


async def test_app_keys_never_reach_the_keystore_log(bus: Bus, keystore: KeystoreProcess) -> None:
    app = await new_app(bus)
    key = app.app_api_key.get_secret_value()
    await bus.request(ks.APP_KEY_REVOKE, ks.AppKeyRevoke(key_id=app.key_id))
    with pytest.raises(ByoError):
        await bus.request(
            ks.APP_AUTHENTICATE, ks.AppAuthenticate(key_id=app.key_id, key_hash=sha256_hex(key))
        )

    log = keystore.log_text()
    assert key not in log
    assert key[-43:] not in log
