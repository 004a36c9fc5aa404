"""Tunnels: tokens stored hashed, the client's key bound once, sessions, rotation and revocation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets

import pytest
from nats.aio.client import Client as NatsClient
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from byorouter_common.bus import Bus
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts import tunnel as tn
from byorouter_common.errors import ByoError
from tests.keystore.conftest import (
    EventListener,
    KeystoreProcess,
    new_app,
    new_connection,
    provider_key,
)

pytestmark = pytest.mark.usefixtures("keystore")


def public_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


async def registered(
    bus: Bus, **keys: str
) -> tuple[ks.AppCreated, ks.ConnectionInfo, ks.TunnelToken]:
    app = await new_app(bus)
    connection = await new_connection(bus, app.app_id, **(keys or {"openai": provider_key()}))
    token = await bus.request(
        ks.TUNNEL_REGISTER,
        ks.TunnelRegister(
            app_id=app.app_id,
            connection_id=connection.connection_id,
            name="home gpu",
            models=[ks.DeclaredModel(name="llama3.1:8b", capabilities=["chat"])],
        ),
    )
    return app, connection, token


async def authenticate(
    bus: Bus, key: str, *, token: str | None = None, session: str | None = None
) -> ks.TunnelSession:
    return await bus.request(
        ks.TUNNEL_AUTHENTICATE,
        ks.TunnelAuthenticate(
            token=SecretStr(token) if token else None,
            session=SecretStr(session) if session else None,
            public_key=key,
        ),
    )


async def refused(bus: Bus, key: str, **secret: str) -> ByoError:
    with pytest.raises(ByoError) as caught:
        await authenticate(bus, key, **secret)
    return caught.value


async def test_register_returns_a_token_stored_only_as_its_hash(bus: Bus, db: AsyncEngine) -> None:
    app, connection, issued = await registered(bus)
    token = issued.token.get_secret_value()

    assert tn.is_tunnel_id(issued.tunnel_id)
    assert len(issued.tunnel_id) == len("tun_") + 22
    assert token.startswith("byo_tun_")
    assert issued.connection_id == connection.connection_id
    async with db.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT * FROM tunnels WHERE id = :id"), {"id": issued.tunnel_id}
            )
        ).one()
    assert token not in repr(stored)
    assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest()
    session = await authenticate(bus, public_key(), token=token)
    assert (session.tunnel_id, session.connection_id, session.app_id) == (
        issued.tunnel_id,
        connection.connection_id,
        app.app_id,
    )
    assert session.session.get_secret_value().startswith("byo_tses_")
    assert session.session_ttl_s == 900


async def test_register_gives_the_connection_a_selfhosted_provider_through_the_tunnel(
    bus: Bus,
) -> None:
    app, connection, issued = await registered(bus)
    info = await bus.request(
        ks.CONNECTION_GET,
        ks.ConnectionRef(app_id=app.app_id, connection_id=connection.connection_id),
    )
    selfhosted = [p for p in info.providers if p.provider == "selfhosted"]
    assert [(p.tunnel_id, p.base_url, p.label, p.priority) for p in selfhosted] == [
        (issued.tunnel_id, None, None, 1)
    ]


async def test_register_keeps_an_existing_direct_url_as_the_fallback(bus: Bus) -> None:
    app, connection, issued = await registered(bus, selfhosted="sk-local-key")
    resolved = await bus.request(
        ks.CREDENTIALS_RESOLVE,
        ks.ConnectionRef(app_id=app.app_id, connection_id=connection.connection_id),
    )
    [provider] = resolved.providers
    assert provider.base_url == "http://127.0.0.1:11434/v1"
    assert provider.api_key is not None
    assert provider.api_key.get_secret_value() == "sk-local-key"
    # Not bound yet: the router treats the tunnel as offline and uses the direct URL.
    assert (provider.tunnel_id, provider.tunnel_public_key) == (issued.tunnel_id, None)


async def test_register_announces_the_connection_changed(bus: Bus, nc: NatsClient) -> None:
    app = await new_app(bus)
    connection = await new_connection(bus, app.app_id, openai=provider_key())
    listener = await EventListener(events.CONNECTION_CHANGED).start(nc)
    try:
        await bus.request(
            ks.TUNNEL_REGISTER,
            ks.TunnelRegister(app_id=app.app_id, connection_id=connection.connection_id),
        )
        event = await listener.next()
    finally:
        await listener.stop()
    assert (event.connection_id, event.deleted) == (connection.connection_id, False)


async def test_another_apps_connection_and_tunnel_are_not_found(bus: Bus) -> None:
    _, connection, issued = await registered(bus)
    other = await new_app(bus, "other app")
    with pytest.raises(ByoError) as caught:
        await bus.request(
            ks.TUNNEL_REGISTER,
            ks.TunnelRegister(app_id=other.app_id, connection_id=connection.connection_id),
        )
    assert (caught.value.status, caught.value.code) == (404, "connection_not_found")
    for endpoint, request in (
        (ks.TUNNEL_GET, ks.TunnelRef(app_id=other.app_id, tunnel_id=issued.tunnel_id)),
        (ks.TUNNEL_ROTATE, ks.TunnelRotate(app_id=other.app_id, tunnel_id=issued.tunnel_id)),
        (ks.TUNNEL_REVOKE, ks.TunnelRef(app_id=other.app_id, tunnel_id=issued.tunnel_id)),
        (ks.TUNNEL_GET, ks.TunnelRef(app_id=other.app_id, tunnel_id="tun_doesnotexist00000000")),
    ):
        with pytest.raises(ByoError) as caught:
            await bus.request(endpoint, request)  # type: ignore[arg-type]
        assert (caught.value.status, caught.value.code) == (404, "tunnel_not_found")


async def test_first_connect_binds_the_public_key_and_another_key_is_refused(bus: Bus) -> None:
    app, connection, issued = await registered(bus)
    token = issued.token.get_secret_value()
    key = public_key()
    await authenticate(bus, key, token=token)
    again = await authenticate(bus, key, token=token)

    error = await refused(bus, public_key(), token=token)
    assert (error.status, error.code) == (403, "tunnel_key_mismatch")
    assert "key file" in error.message
    error = await refused(bus, public_key(), session=again.session.get_secret_value())
    assert (error.status, error.code) == (403, "tunnel_key_mismatch")

    info = await bus.request(
        ks.TUNNEL_GET, ks.TunnelRef(app_id=app.app_id, tunnel_id=issued.tunnel_id)
    )
    assert info.public_key_fingerprint == tn.public_key_fingerprint(key)
    resolved = await bus.request(
        ks.CREDENTIALS_RESOLVE,
        ks.ConnectionRef(app_id=app.app_id, connection_id=connection.connection_id),
    )
    assert [(p.tunnel_id, p.tunnel_public_key) for p in resolved.providers][-1] == (
        issued.tunnel_id,
        key,
    )


async def test_a_wrong_token_is_refused(bus: Bus) -> None:
    error = await refused(bus, public_key(), token="byo_tun_" + secrets.token_urlsafe(32))
    assert (error.status, error.code) == (401, "tunnel_token_invalid")


async def test_a_session_opens_once_and_an_unknown_one_asks_for_the_token(bus: Bus) -> None:
    _, _, issued = await registered(bus)
    key = public_key()
    first = await authenticate(bus, key, token=issued.token.get_secret_value())
    second = await authenticate(bus, key, session=first.session.get_secret_value())

    assert second.tunnel_id == issued.tunnel_id
    assert second.session.get_secret_value() != first.session.get_secret_value()
    error = await refused(bus, key, session=first.session.get_secret_value())
    assert (error.status, error.code) == (401, "session_invalid")
    error = await refused(bus, key, session="byo_tses_" + secrets.token_urlsafe(32))
    assert (error.status, error.code) == (401, "session_invalid")


async def test_an_expired_session_is_refused(bus: Bus, db: AsyncEngine) -> None:
    _, _, issued = await registered(bus)
    key = public_key()
    opened = await authenticate(bus, key, token=issued.token.get_secret_value())
    session_hash = hashlib.sha256(opened.session.get_secret_value().encode()).hexdigest()
    async with db.begin() as conn:
        await conn.execute(
            text(
                "UPDATE tunnel_sessions SET expires_at = now() - interval '1 second' "
                "WHERE session_hash = :h"
            ),
            {"h": session_hash},
        )
    error = await refused(bus, key, session=opened.session.get_secret_value())
    assert (error.status, error.code) == (401, "session_invalid")


async def test_session_refresh_gives_a_fresh_session(bus: Bus) -> None:
    _, _, issued = await registered(bus)
    key = public_key()
    await authenticate(bus, key, token=issued.token.get_secret_value())
    fresh = await bus.request(
        ks.TUNNEL_SESSION_REFRESH, ks.TunnelSessionRefresh(tunnel_id=issued.tunnel_id)
    )
    reopened = await authenticate(bus, key, session=fresh.session.get_secret_value())
    assert reopened.tunnel_id == issued.tunnel_id


async def test_rotation_keeps_the_old_token_only_during_the_overlap(
    bus: Bus, nc: NatsClient
) -> None:
    app, _, issued = await registered(bus)
    key = public_key()
    old = issued.token.get_secret_value()
    opened = await authenticate(bus, key, token=old)
    listener = await EventListener(events.TUNNEL_CHANGED).start(nc)
    try:
        rotated = await bus.request(
            ks.TUNNEL_ROTATE,
            ks.TunnelRotate(app_id=app.app_id, tunnel_id=issued.tunnel_id, overlap_s=1),
        )
        event = await listener.next()
    finally:
        await listener.stop()
    new = rotated.token.get_secret_value()

    assert (event.tunnel_id, event.revoked) == (issued.tunnel_id, False)
    assert new != old
    assert new.startswith("byo_tun_")
    assert rotated.previous_valid_until is not None
    await authenticate(bus, key, token=old)  # still inside the overlap
    await asyncio.sleep(1.2)
    error = await refused(bus, key, token=old)
    assert (error.status, error.code) == (401, "tunnel_token_invalid")
    await authenticate(bus, key, token=new)
    # Sessions are not touched by rotation.
    await authenticate(bus, key, session=opened.session.get_secret_value())


async def test_revoke_refuses_tokens_and_sessions_and_is_announced(
    bus: Bus, nc: NatsClient
) -> None:
    app, connection, issued = await registered(bus)
    key = public_key()
    token = issued.token.get_secret_value()
    opened = await authenticate(bus, key, token=token)
    tunnel_events = await EventListener(events.TUNNEL_CHANGED).start(nc)
    connection_events = await EventListener(events.CONNECTION_CHANGED).start(nc)
    try:
        revoked = await bus.request(
            ks.TUNNEL_REVOKE, ks.TunnelRef(app_id=app.app_id, tunnel_id=issued.tunnel_id)
        )
        tunnel_event = await tunnel_events.next()
        connection_event = await connection_events.next()
    finally:
        await tunnel_events.stop()
        await connection_events.stop()

    assert revoked == ks.TunnelRevoked(tunnel_id=issued.tunnel_id, revoked=True)
    assert (tunnel_event.tunnel_id, tunnel_event.revoked, tunnel_event.app_id) == (
        issued.tunnel_id,
        True,
        app.app_id,
    )
    assert connection_event.connection_id == connection.connection_id
    error = await refused(bus, key, token=token)
    assert (error.status, error.code) == (403, "tunnel_revoked")
    error = await refused(bus, key, session=opened.session.get_secret_value())
    assert error.status in (401, 403)
    with pytest.raises(ByoError) as caught:
        await bus.request(
            ks.TUNNEL_SESSION_REFRESH, ks.TunnelSessionRefresh(tunnel_id=issued.tunnel_id)
        )
    assert caught.value.code == "tunnel_revoked"
    info = await bus.request(
        ks.TUNNEL_GET, ks.TunnelRef(app_id=app.app_id, tunnel_id=issued.tunnel_id)
    )
    assert info.status == "revoked"
    resolved = await bus.request(
        ks.CREDENTIALS_RESOLVE,
        ks.ConnectionRef(app_id=app.app_id, connection_id=connection.connection_id),
    )
    assert [(p.tunnel_id, p.tunnel_public_key) for p in resolved.providers][-1] == (None, None)


async def test_deleting_the_connection_revokes_its_tunnel(bus: Bus, nc: NatsClient) -> None:
    app, connection, issued = await registered(bus)
    listener = await EventListener(events.TUNNEL_CHANGED).start(nc)
    try:
        await bus.request(
            ks.CONNECTION_DELETE,
            ks.ConnectionRef(app_id=app.app_id, connection_id=connection.connection_id),
        )
        event = await listener.next()
    finally:
        await listener.stop()
    assert (event.tunnel_id, event.revoked) == (issued.tunnel_id, True)
    error = await refused(bus, public_key(), token=issued.token.get_secret_value())
    assert (error.status, error.code) == (403, "tunnel_revoked")


async def test_presence_records_models_version_and_last_seen(bus: Bus) -> None:
    app, _, issued = await registered(bus)
    before = await bus.request(
        ks.TUNNEL_GET, ks.TunnelRef(app_id=app.app_id, tunnel_id=issued.tunnel_id)
    )
    await bus.request(
        ks.TUNNEL_PRESENCE,
        ks.TunnelPresence(
            tunnel_id=issued.tunnel_id,
            online=True,
            models=["llama3.1:8b", "qwen2.5:7b"],
            client_version="0.1.0",
        ),
    )
    after = await bus.request(
        ks.TUNNEL_GET, ks.TunnelRef(app_id=app.app_id, tunnel_id=issued.tunnel_id)
    )
    assert before.last_seen_at is None
    assert before.models == []
    assert [m.name for m in before.declared_models] == ["llama3.1:8b"]
    assert after.models == ["llama3.1:8b", "qwen2.5:7b"]
    assert after.client_version == "0.1.0"
    assert after.last_seen_at is not None


async def test_selfhosted_needs_a_direct_url_or_a_tunnel_and_create_takes_no_tunnel(
    bus: Bus,
) -> None:
    app = await new_app(bus)
    for provider, code_param in (
        (ks.ProviderCredentialInput(provider="selfhosted"), "providers[0].base_url"),
        (
            ks.ProviderCredentialInput(provider="selfhosted", tunnel_id="tun_" + "a" * 22),
            "providers[0].tunnel_id",
        ),
    ):
        with pytest.raises(ByoError) as caught:
            await bus.request(
                ks.CONNECTION_CREATE, ks.ConnectionCreate(app_id=app.app_id, providers=[provider])
            )
        assert (caught.value.status, caught.value.param) == (400, code_param)


async def test_tokens_and_sessions_never_reach_a_log(
    bus: Bus, keystore: KeystoreProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app, _, issued = await registered(bus)
    key = public_key()
    token = issued.token.get_secret_value()
    opened = await authenticate(bus, key, token=token)
    await refused(bus, public_key(), token=token)
    rotated = await bus.request(
        ks.TUNNEL_ROTATE, ks.TunnelRotate(app_id=app.app_id, tunnel_id=issued.tunnel_id)
    )
    secrets_seen = (token, opened.session.get_secret_value(), rotated.token.get_secret_value())
    for secret in secrets_seen:
        assert secret not in keystore.log_text()
        assert secret not in caplog.text
        assert secret not in repr(issued) + repr(opened) + repr(rotated)
