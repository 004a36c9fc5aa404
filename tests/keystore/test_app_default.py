"""An app's own default provider in keystore: stored encrypted, bound to its app, rotated."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from byorouter_common.bus import Bus
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.base import Empty
from byorouter_common.errors import ByoError
from tests.keystore.conftest import EventListener, new_app, new_connection, provider_key

pytestmark = pytest.mark.usefixtures("keystore")


async def set_default(
    bus: Bus, client_id: str, key: str | None, *, provider: ks.ProviderName = "openai"
) -> ks.AppDefaultInfo:
    return await bus.request(
        ks.APP_DEFAULT_SET,
        ks.AppDefaultSet(
            client_id=client_id,
            provider=provider,
            api_key=SecretStr(key) if key is not None else None,
            base_url="http://127.0.0.1:11434/v1" if provider == "selfhosted" else None,
            model="gpt-4o-mini",
        ),
    )


async def resolve(bus: Bus, app_id: str, connection_id: str) -> ks.ResolvedConnection:
    return await bus.request(
        ks.CREDENTIALS_RESOLVE, ks.ConnectionRef(app_id=app_id, connection_id=connection_id)
    )


async def stored_default(db: AsyncEngine, app_id: str) -> tuple[int, bytes, bytes]:
    async with db.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT kek_version, wrapped_dek, ciphertext FROM app_default_providers "
                    "WHERE app_id = :app_id"
                ),
                {"app_id": app_id},
            )
        ).one()
    return row.kek_version, bytes(row.wrapped_dek), bytes(row.ciphertext)


@pytest.fixture
async def app_default_events(nc: NatsClient) -> AsyncIterator[EventListener]:
    listener = await EventListener(events.APP_DEFAULT_CHANGED).start(nc)
    yield listener
    await listener.stop()


async def test_the_default_key_is_stored_encrypted_and_shown_only_masked(
    bus: Bus, db: AsyncEngine
) -> None:
    app = await new_app(bus)
    key = provider_key("sk-proj-")

    info = await set_default(bus, app.client_id, key)

    assert info.provider == "openai"
    assert info.label is not None
    assert info.label.endswith(key[-4:])
    assert key not in info.model_dump_json()
    _, wrapped, ciphertext = await stored_default(db, app.app_id)
    assert key.encode() not in ciphertext
    assert key[-12:].encode() not in ciphertext + wrapped
    shown = await bus.request(ks.APP_GET, ks.AppGet(client_id=app.client_id))
    assert shown.has_default_provider
    assert shown.default_provider == "openai"
    assert shown.default_provider_label == info.label
    assert key not in shown.model_dump_json()


async def test_every_connection_of_the_app_resolves_the_default_whatever_its_fallback_setting(
    bus: Bus,
) -> None:
    app = await new_app(bus)
    key = provider_key("sk-ant-")
    await set_default(bus, app.client_id, key, provider="anthropic")
    user_key = provider_key()
    connection = await new_connection(bus, app.app_id, openai=user_key)

    resolved = await resolve(bus, app.app_id, connection.connection_id)

    assert resolved.fallback_to_default is False
    assert resolved.app_default is not None
    assert resolved.app_default.provider == "anthropic"
    assert resolved.app_default.preferred_model == "gpt-4o-mini"
    assert resolved.app_default.api_key is not None
    assert resolved.app_default.api_key.get_secret_value() == key
    # The user's own key is untouched by the app's.
    assert [p.api_key.get_secret_value() for p in resolved.providers if p.api_key] == [user_key]


async def test_an_app_without_a_default_resolves_none_and_says_so(bus: Bus) -> None:
    app = await new_app(bus)
    connection = await new_connection(bus, app.app_id, openai=provider_key())

    resolved = await resolve(bus, app.app_id, connection.connection_id)
    shown = await bus.request(ks.APP_GET, ks.AppGet(client_id=app.client_id))

    assert resolved.app_default is None
    assert not shown.has_default_provider
    assert shown.default_provider is None


async def test_a_default_copied_to_another_app_does_not_decrypt(bus: Bus, db: AsyncEngine) -> None:
    victim, thief = await new_app(bus, "victim"), await new_app(bus, "thief")
    victim_key = provider_key("sk-proj-")
    await set_default(bus, victim.client_id, victim_key)
    await set_default(bus, thief.client_id, provider_key("sk-proj-"))
    connection = await new_connection(bus, thief.app_id, openai=provider_key())
    try:
        async with db.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE app_default_providers AS t SET kek_version = v.kek_version, "
                    "wrapped_dek = v.wrapped_dek, ciphertext = v.ciphertext "
                    "FROM app_default_providers AS v WHERE t.app_id = :thief AND v.app_id = :victim"
                ),
                {"thief": thief.app_id, "victim": victim.app_id},
            )

        with pytest.raises(ByoError) as err:
            await resolve(bus, thief.app_id, connection.connection_id)
        assert err.value.code == "credential_undecryptable"
        assert victim_key not in str(err.value.envelope())
    finally:
        # A row nobody can decrypt would keep its KEK version alive through later rotations.
        await bus.request(ks.APP_DEFAULT_CLEAR, ks.AppDefaultClear(client_id=thief.client_id))


async def test_a_default_copied_into_a_connection_credential_does_not_decrypt(
    bus: Bus, db: AsyncEngine
) -> None:
    app = await new_app(bus)
    await set_default(bus, app.client_id, provider_key("sk-proj-"))
    connection = await new_connection(bus, app.app_id, openai=provider_key())
    try:
        async with db.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE credentials AS c SET kek_version = d.kek_version, "
                    "wrapped_dek = d.wrapped_dek, ciphertext = d.ciphertext "
                    "FROM app_default_providers AS d "
                    "WHERE c.connection_id = :connection_id AND d.app_id = :app_id"
                ),
                {"connection_id": connection.connection_id, "app_id": app.app_id},
            )

        with pytest.raises(ByoError) as err:
            await resolve(bus, app.app_id, connection.connection_id)
        assert err.value.code == "credential_undecryptable"
    finally:
        await bus.request(
            ks.CONNECTION_DELETE,
            ks.ConnectionRef(app_id=app.app_id, connection_id=connection.connection_id),
        )


async def test_rotation_rewraps_the_default_and_prune_keeps_it_readable(
    bus: Bus, db: AsyncEngine
) -> None:
    app = await new_app(bus)
    key = provider_key("sk-proj-")
    await set_default(bus, app.client_id, key)
    connection = await new_connection(bus, app.app_id, openai=provider_key())
    version_before, wrapped_before, ciphertext_before = await stored_default(db, app.app_id)

    rotated = await bus.request(ks.KEYS_ROTATE, Empty(), timeout_s=30)
    pruned = await bus.request(ks.KEYS_PRUNE, Empty())

    assert rotated.app_defaults_rewrapped >= 1
    version, wrapped, ciphertext = await stored_default(db, app.app_id)
    assert version == rotated.active_version != version_before
    assert wrapped != wrapped_before
    assert ciphertext == ciphertext_before
    assert version_before in pruned.removed_versions
    resolved = await resolve(bus, app.app_id, connection.connection_id)
    assert resolved.app_default is not None
    assert resolved.app_default.api_key is not None
    assert resolved.app_default.api_key.get_secret_value() == key
    status = await bus.request(ks.KEYS_STATUS, Empty())
    assert set(status.app_defaults_by_version) == {str(rotated.active_version)}


async def test_setting_and_clearing_announce_it_and_clearing_erases_the_key(
    bus: Bus, db: AsyncEngine, app_default_events: EventListener
) -> None:
    app = await new_app(bus)
    connection = await new_connection(bus, app.app_id, openai=provider_key())

    await set_default(bus, app.client_id, provider_key())
    assert (await app_default_events.next(within_s=1.0)).app_id == app.app_id
    cleared = await bus.request(ks.APP_DEFAULT_CLEAR, ks.AppDefaultClear(client_id=app.client_id))
    assert (await app_default_events.next(within_s=1.0)).app_id == app.app_id
    again = await bus.request(ks.APP_DEFAULT_CLEAR, ks.AppDefaultClear(client_id=app.client_id))

    assert cleared.cleared
    assert not again.cleared
    async with db.connect() as conn:
        rows = await conn.scalar(
            text("SELECT count(*) FROM app_default_providers WHERE app_id = :app_id"),
            {"app_id": app.app_id},
        )
    assert rows == 0
    assert (await resolve(bus, app.app_id, connection.connection_id)).app_default is None


async def test_setting_again_replaces_the_default(bus: Bus) -> None:
    app = await new_app(bus)
    connection = await new_connection(bus, app.app_id, openai=provider_key())
    await set_default(bus, app.client_id, provider_key())
    newer = provider_key("sk-ant-")

    await set_default(bus, app.client_id, newer, provider="anthropic")

    resolved = await resolve(bus, app.app_id, connection.connection_id)
    assert resolved.app_default is not None
    assert resolved.app_default.provider == "anthropic"
    assert resolved.app_default.api_key is not None
    assert resolved.app_default.api_key.get_secret_value() == newer


@pytest.mark.parametrize(
    ("provider", "base_url", "param"),
    [
        ("openai", None, "api_key"),
        ("selfhosted", None, "base_url"),
        ("selfhosted", "http://user:pw@127.0.0.1:11434/v1", "base_url"),
        ("selfhosted", "http://127.0.0.1:11434/v1?api_key=user:pw", "base_url"),
        ("selfhosted", "http://127.0.0.1:11434/v1#user:pw", "base_url"),
    ],
)
async def test_a_default_that_could_never_work_is_refused_without_echoing_it(
    bus: Bus, provider: ks.ProviderName, base_url: str | None, param: str
) -> None:
    app = await new_app(bus)
    with pytest.raises(ByoError) as err:
        await bus.request(
            ks.APP_DEFAULT_SET,
            ks.AppDefaultSet(client_id=app.client_id, provider=provider, base_url=base_url),
        )
    assert err.value.status == 400
    assert err.value.param == param
    assert "user:pw" not in str(err.value.envelope())
    shown = await bus.request(ks.APP_GET, ks.AppGet(client_id=app.client_id))
    assert not shown.has_default_provider


async def test_a_default_whose_base_url_carries_a_secret_is_refused_and_not_stored(
    bus: Bus,
) -> None:
    app = await new_app(bus)
    key, hidden = provider_key("sk-proj-"), provider_key("sk-")
    with pytest.raises(ByoError) as err:
        await bus.request(
            ks.APP_DEFAULT_SET,
            ks.AppDefaultSet(
                client_id=app.client_id,
                provider="openai",
                api_key=SecretStr(key),
                base_url=f"https://api.example/v1?api_key={hidden}",
            ),
        )

    assert (err.value.status, err.value.param) == (400, "base_url")
    assert "query string" in err.value.message
    body = str(err.value.envelope())
    assert hidden not in body
    assert hidden[-8:] not in body
    assert "api.example" not in body
    shown = await bus.request(ks.APP_GET, ks.AppGet(client_id=app.client_id))
    assert not shown.has_default_provider


async def test_an_unknown_app_cannot_get_a_default(bus: Bus) -> None:
    with pytest.raises(ByoError) as err:
        await bus.request(
            ks.APP_DEFAULT_SET,
            ks.AppDefaultSet(
                client_id="cli_nosuchapp", provider="openai", api_key=SecretStr(provider_key())
            ),
        )
    assert err.value.status == 404
