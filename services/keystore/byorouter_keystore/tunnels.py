"""Tunnels: a connection's way to its user's own model server, their tokens, sessions and presence.

The long-lived token (`byo_tun_...`, shown once) and every session token (`byo_tses_...`) are
stored only as SHA-256 hex and compared in constant time. The client's X25519 public key is
bound to the tunnel at its first connect, so the router seals requests to that key and no other
(docs/decisions/0007-tunnel-protocol.md). Expiry is judged by the database's clock.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

from pydantic import SecretStr
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from byorouter_common import errors
from byorouter_common.bus import serve
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts import tunnel as tn
from byorouter_common.contracts.base import Empty
from byorouter_common.errors import ByoError
from byorouter_keystore import ids
from byorouter_keystore.crypto import Destination, KeyringStore
from byorouter_keystore.provider_policy import connection_policy, not_allowed
from byorouter_keystore.shared import (
    Handlers,
    audit,
    credentials_of,
    open_credential,
    owned_connection,
    seal_api_key,
    store_sealed,
)
from byorouter_keystore.tables import Connection, Credential, Tunnel, TunnelSession
from byorouter_keystore.webhooks import enqueue_event

TOKEN_PREFIX: Final = "byo_tun_"  # noqa: S105 (a prefix, not a secret)
SESSION_PREFIX: Final = "byo_tses_"
# Short, so a leaked session is worth little; the tunnel service refreshes it inside the socket.
SESSION_TTL_S: Final = 900


def tunnel_not_found() -> ByoError:
    # The same answer for a missing tunnel and another app's: ids are not probeable.
    return errors.not_found("Tunnel not found.", code="tunnel_not_found")


def token_invalid() -> ByoError:
    return ByoError(
        401,
        "tunnel_token_invalid",
        "The tunnel token is not valid: check it was copied whole, or use the newest token "
        "if the tunnel's token was rotated.",
    )


def session_invalid() -> ByoError:
    # The tunnel service retries with the long-lived token on this code.
    return ByoError(
        401, "session_invalid", "The tunnel session expired or is unknown; connect with the token."
    )


def tunnel_revoked() -> ByoError:
    return ByoError(403, "tunnel_revoked", "This tunnel was revoked; register a new one.")


def key_mismatch() -> ByoError:
    return ByoError(
        403,
        "tunnel_key_mismatch",
        "This tunnel is bound to another client key. Every client of one tunnel shares one key "
        "file: copy it from the machine that connected first, or register a new tunnel.",
    )


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _matches(stored: str | None, presented: str) -> bool:
    return stored is not None and hmac.compare_digest(stored, presented)


async def _now(session: AsyncSession) -> datetime:
    now = await session.scalar(select(func.now()))
    assert isinstance(now, datetime)
    return now


def _new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


# --- the app's side: register, look up, rotate, revoke -------------------------------------------


async def owned_tunnel(
    session: AsyncSession, app_id: str, tunnel_id: str, *, for_update: bool = False
) -> Tunnel:
    """The app's tunnel (revoked ones too); a 404 for a missing or another app's tunnel."""
    if not tn.is_tunnel_id(tunnel_id):
        raise tunnel_not_found()
    query = select(Tunnel).where(Tunnel.id == tunnel_id, Tunnel.app_id == app_id)
    if for_update:
        query = query.with_for_update()
    tunnel = await session.scalar(query)
    if tunnel is None:
        raise tunnel_not_found()
    return tunnel


async def _revoke(session: AsyncSession, tunnel: Tunnel, now: datetime) -> None:
    tunnel.revoked_at = now
    await session.execute(delete(TunnelSession).where(TunnelSession.tunnel_id == tunnel.id))


async def register_tunnel(
    session: AsyncSession, keyring: KeyringStore, request: ks.TunnelRegister
) -> tuple[Tunnel, str, Tunnel | None]:
    """A new tunnel for the connection's self-hosted provider: (tunnel, token, tunnel replaced).

    The provider is created (keyless, no direct URL) if the connection has none; an existing
    one keeps its key and direct URL, the fallback while the tunnel is offline. A tunnel it
    pointed at before is revoked: one connection routes through one tunnel.
    """
    connection = await owned_connection(
        session, request.app_id, request.connection_id, for_update=True
    )
    if "tunnel" not in await connection_policy(session, connection):
        raise not_allowed("tunnel")
    now = await _now(session)
    credentials = await credentials_of(session, connection.id)
    selfhosted = next((c for c in credentials if c.provider == "selfhosted"), None)
    replaced = None
    if selfhosted is not None and selfhosted.tunnel_id is not None:
        replaced = await session.get(Tunnel, selfhosted.tunnel_id, with_for_update=True)
        if replaced is not None and replaced.revoked_at is None:
            await _revoke(session, replaced, now)
        else:
            replaced = None
    token = _new_token()
    tunnel = Tunnel(
        id=ids.new_tunnel_id(),
        app_id=connection.app_id,
        connection_id=connection.id,
        name=request.name,
        token_hash=secret_hash(token),
        declared_models=[m.model_dump(mode="json") for m in request.models],
        models=[],
    )
    session.add(tunnel)
    await session.flush()
    if selfhosted is None:
        selfhosted = Credential(
            id=ids.new_credential_id(),
            connection_id=connection.id,
            provider="selfhosted",
            priority=max((c.priority for c in credentials), default=-1) + 1,
            base_url=None,
            preferred_model=request.models[0].name if request.models else None,
            label=None,
            status="ok",
            tunnel_id=tunnel.id,
        )
        api_key = None
        session.add(selfhosted)
    else:
        # The key is bound to where it may go: pointing it at the new tunnel means re-sealing.
        api_key = open_credential(keyring, selfhosted)
        selfhosted.tunnel_id = tunnel.id
        selfhosted.status = "ok"
        selfhosted.last_error = None
    destination = Destination(selfhosted.base_url, tunnel.id)
    store_sealed(
        selfhosted, seal_api_key(keyring, api_key, connection.id, "selfhosted", destination)
    )
    await session.flush()
    audit(
        session,
        "tunnel.registered",
        connection.app_id,
        tunnel.id,
        connection_id=connection.id,
        replaced=replaced.id if replaced is not None else None,
    )
    return tunnel, token, replaced


async def rotate_tunnel(session: AsyncSession, request: ks.TunnelRotate) -> tuple[Tunnel, str]:
    """A new token; the current one opens new sockets only for `overlap_s` more seconds."""
    tunnel = await owned_tunnel(session, request.app_id, request.tunnel_id, for_update=True)
    if tunnel.revoked_at is not None:
        raise tunnel_revoked()
    now = await _now(session)
    token = _new_token()
    tunnel.previous_token_hash = tunnel.token_hash
    tunnel.previous_valid_until = now + timedelta(seconds=request.overlap_s)
    tunnel.token_hash = secret_hash(token)
    tunnel.rotated_at = now
    audit(
        session,
        "tunnel.rotated",
        tunnel.app_id,
        tunnel.id,
        connection_id=tunnel.connection_id,
        overlap_s=request.overlap_s,
    )
    return tunnel, token


async def revoke_tunnel(session: AsyncSession, request: ks.TunnelRef) -> tuple[Tunnel, bool]:
    """Refuse the tunnel's tokens and sessions from now on; True if it was active until now."""
    tunnel = await owned_tunnel(session, request.app_id, request.tunnel_id, for_update=True)
    if tunnel.revoked_at is not None:
        return tunnel, False
    await _revoke(session, tunnel, await _now(session))
    audit(session, "tunnel.revoked", tunnel.app_id, tunnel.id, connection_id=tunnel.connection_id)
    return tunnel, True


async def revoke_tunnels_of_connection(session: AsyncSession, connection_id: str) -> list[Tunnel]:
    """A disconnected connection's tunnels are revoked with it; returns those it revoked."""
    tunnels = list(
        await session.scalars(
            select(Tunnel)
            .where(Tunnel.connection_id == connection_id, Tunnel.revoked_at.is_(None))
            .with_for_update()
        )
    )
    if tunnels:
        now = await _now(session)
        for tunnel in tunnels:
            await _revoke(session, tunnel, now)
    return tunnels


async def check_tunnel_of(session: AsyncSession, connection_id: str, tunnel_id: str) -> None:
    """Refuse a tunnel id that is not an active tunnel of this connection (the same 404)."""
    tunnel = await session.get(Tunnel, tunnel_id) if tn.is_tunnel_id(tunnel_id) else None
    if tunnel is None or tunnel.connection_id != connection_id or tunnel.revoked_at is not None:
        raise tunnel_not_found()


async def routable_tunnels(
    session: AsyncSession, credentials: Sequence[Credential]
) -> dict[str, Tunnel]:
    """The active tunnels the credentials point at, by id: only a tunnel of the credential's own
    connection counts, so a row pointed at someone else's tunnel routes nowhere."""
    wanted = {c.tunnel_id: c.connection_id for c in credentials if c.tunnel_id is not None}
    if not wanted:
        return {}
    rows = await session.scalars(
        select(Tunnel).where(Tunnel.id.in_(wanted), Tunnel.revoked_at.is_(None))
    )
    return {t.id: t for t in rows if wanted.get(t.id) == t.connection_id}


def tunnel_info(tunnel: Tunnel) -> ks.TunnelInfo:
    return ks.TunnelInfo(
        tunnel_id=tunnel.id,
        connection_id=tunnel.connection_id,
        app_id=tunnel.app_id,
        name=tunnel.name,
        status="revoked" if tunnel.revoked_at is not None else "active",
        declared_models=[ks.DeclaredModel.model_validate(m) for m in tunnel.declared_models],
        models=list(tunnel.models),
        last_seen_at=tunnel.last_seen_at,
        client_version=tunnel.client_version,
        public_key_fingerprint=(
            tn.public_key_fingerprint(tunnel.public_key) if tunnel.public_key else None
        ),
        created_at=tunnel.created_at,
        rotated_at=tunnel.rotated_at,
        previous_valid_until=tunnel.previous_valid_until,
    )


# --- the tunnel service's side: authenticate, refresh, presence ----------------------------------


async def purge_expired_sessions(session: AsyncSession) -> None:
    await session.execute(delete(TunnelSession).where(TunnelSession.expires_at < func.now()))


async def _issue_session(session: AsyncSession, tunnel: Tunnel, now: datetime) -> str:
    token = SESSION_PREFIX + secrets.token_urlsafe(32)
    session.add(
        TunnelSession(
            session_hash=secret_hash(token),
            tunnel_id=tunnel.id,
            expires_at=now + timedelta(seconds=SESSION_TTL_S),
        )
    )
    await session.flush()
    return token


async def _tunnel_by_token(session: AsyncSession, token: str, now: datetime) -> Tunnel:
    presented = secret_hash(token)
    tunnel = await session.scalar(
        select(Tunnel)
        .where(or_(Tunnel.token_hash == presented, Tunnel.previous_token_hash == presented))
        .with_for_update()
    )
    if tunnel is None:
        raise token_invalid()
    if _matches(tunnel.token_hash, presented):
        return tunnel
    still_valid = tunnel.previous_valid_until is not None and now < tunnel.previous_valid_until
    if still_valid and _matches(tunnel.previous_token_hash, presented):
        return tunnel
    raise token_invalid()


async def _tunnel_by_session(session: AsyncSession, token: str, now: datetime) -> Tunnel:
    row = await session.get(TunnelSession, secret_hash(token), with_for_update=True)
    if row is None or row.expires_at <= now:
        raise session_invalid()
    tunnel = await session.get(Tunnel, row.tunnel_id, with_for_update=True)
    # Used once: the client gets a fresh one with this answer.
    await session.delete(row)
    if tunnel is None:
        raise session_invalid()
    return tunnel


async def _check_active(session: AsyncSession, tunnel: Tunnel) -> None:
    connection = await session.get(Connection, tunnel.connection_id)
    if tunnel.revoked_at is not None or connection is None or connection.status != "active":
        raise tunnel_revoked()


async def authenticate_tunnel(
    session: AsyncSession, request: ks.TunnelAuthenticate
) -> tuple[Tunnel, str, bool]:
    """The tunnel a client's token or session opens, a fresh session for it, and whether this
    client's public key was bound just now (the first client to connect binds it; any other key
    is refused)."""
    if (request.token is None) == (request.session is None):
        raise errors.bad_request("Send either a tunnel token or a session, not both or neither.")
    if tn.public_key_bytes(request.public_key) is None:
        raise errors.bad_request(
            "public_key must be an X25519 public key in base64url.", code="invalid_public_key"
        )
    await purge_expired_sessions(session)
    now = await _now(session)
    if request.token is not None:
        tunnel = await _tunnel_by_token(session, request.token.get_secret_value(), now)
    else:
        assert request.session is not None
        tunnel = await _tunnel_by_session(session, request.session.get_secret_value(), now)
    await _check_active(session, tunnel)
    bound = tunnel.public_key is None
    if bound:
        tunnel.public_key = request.public_key
        audit(
            session,
            "tunnel.key_bound",
            tunnel.app_id,
            tunnel.id,
            fingerprint=tn.public_key_fingerprint(request.public_key),
        )
    elif not _matches(tunnel.public_key, request.public_key):
        raise key_mismatch()
    return tunnel, await _issue_session(session, tunnel, now), bound


async def refresh_session(session: AsyncSession, tunnel_id: str) -> tuple[Tunnel, str]:
    """A fresh session for a client whose socket is up, while its tunnel is active."""
    tunnel = await session.get(Tunnel, tunnel_id) if tn.is_tunnel_id(tunnel_id) else None
    if tunnel is None:
        raise tunnel_not_found()
    await _check_active(session, tunnel)
    await purge_expired_sessions(session)
    return tunnel, await _issue_session(session, tunnel, await _now(session))


async def record_presence(session: AsyncSession, request: ks.TunnelPresence) -> None:
    """When a client was last connected, with the models and version it reported."""
    if not tn.is_tunnel_id(request.tunnel_id):
        return
    values: dict[str, object] = {
        "last_seen_at": func.now(),
        "models": request.models,
        "online": request.online,
    }
    if request.client_version is not None:
        values["client_version"] = request.client_version
    # The row locked while read, so two copies reporting at once make one event, not two.
    tunnel = await session.scalar(
        select(Tunnel).where(Tunnel.id == request.tunnel_id).with_for_update()
    )
    if tunnel is None:
        return
    was_online = tunnel.online
    await session.execute(update(Tunnel).where(Tunnel.id == request.tunnel_id).values(**values))
    if was_online != request.online:
        await enqueue_event(
            session,
            tunnel.app_id,
            "tunnel.online" if request.online else "tunnel.offline",
            {"connection_id": tunnel.connection_id, "tunnel_id": tunnel.id},
        )


# --- bus handlers -------------------------------------------------------------------------------


class TunnelHandlers(Handlers):
    """The app's tunnels (through the gateway) and the tunnel service's client checks."""

    def register(self) -> None:
        broker, discovery = self.runtime.broker, self.runtime.discovery
        serve(broker, ks.TUNNEL_REGISTER, self.tunnel_register, discovery=discovery)
        serve(broker, ks.TUNNEL_GET, self.tunnel_get, discovery=discovery)
        serve(broker, ks.TUNNEL_ROTATE, self.tunnel_rotate, discovery=discovery)
        serve(broker, ks.TUNNEL_REVOKE, self.tunnel_revoke, discovery=discovery)
        serve(broker, ks.TUNNEL_AUTHENTICATE, self.tunnel_authenticate, discovery=discovery)
        serve(broker, ks.TUNNEL_SESSION_REFRESH, self.tunnel_session_refresh, discovery=discovery)
        serve(broker, ks.TUNNEL_PRESENCE, self.tunnel_presence, discovery=discovery)

    async def tunnel_register(self, request: ks.TunnelRegister) -> ks.TunnelToken:
        async with self.sessions.begin() as session:
            tunnel, token, replaced = await register_tunnel(session, self.keyring, request)
        if replaced is not None:
            await self.tunnels_revoked([replaced])
        # Routers drop their cached credentials: the self-hosted provider now has a tunnel.
        await self.connection_changed(tunnel.connection_id, tunnel.app_id, deleted=False)
        return ks.TunnelToken(
            tunnel_id=tunnel.id, connection_id=tunnel.connection_id, token=SecretStr(token)
        )

    async def tunnel_get(self, request: ks.TunnelRef) -> ks.TunnelInfo:
        async with self.sessions.begin() as session:
            tunnel = await owned_tunnel(session, request.app_id, request.tunnel_id)
            return tunnel_info(tunnel)

    async def tunnel_rotate(self, request: ks.TunnelRotate) -> ks.TunnelToken:
        async with self.sessions.begin() as session:
            tunnel, token = await rotate_tunnel(session, request)
        await self.tunnel_changed(tunnel, revoked=False)
        return ks.TunnelToken(
            tunnel_id=tunnel.id,
            connection_id=tunnel.connection_id,
            token=SecretStr(token),
            previous_valid_until=tunnel.previous_valid_until,
        )

    async def tunnel_revoke(self, request: ks.TunnelRef) -> ks.TunnelRevoked:
        async with self.sessions.begin() as session:
            tunnel, changed = await revoke_tunnel(session, request)
        if changed:
            await self.tunnels_revoked([tunnel])
            await self.connection_changed(tunnel.connection_id, tunnel.app_id, deleted=False)
        return ks.TunnelRevoked(tunnel_id=tunnel.id)

    async def tunnel_authenticate(self, request: ks.TunnelAuthenticate) -> ks.TunnelSession:
        async with self.sessions.begin() as session:
            tunnel, opened, bound = await authenticate_tunnel(session, request)
        if bound:
            # The router's cached copy has no public key yet: it would treat the tunnel as offline.
            await self.connection_changed(tunnel.connection_id, tunnel.app_id, deleted=False)
        return self._session(tunnel, opened)

    async def tunnel_session_refresh(self, request: ks.TunnelSessionRefresh) -> ks.TunnelSession:
        async with self.sessions.begin() as session:
            tunnel, opened = await refresh_session(session, request.tunnel_id)
        return self._session(tunnel, opened)

    async def tunnel_presence(self, request: ks.TunnelPresence) -> Empty:
        async with self.sessions.begin() as session:
            await record_presence(session, request)
        return Empty()

    @staticmethod
    def _session(tunnel: Tunnel, opened: str) -> ks.TunnelSession:
        return ks.TunnelSession(
            tunnel_id=tunnel.id,
            connection_id=tunnel.connection_id,
            app_id=tunnel.app_id,
            session=SecretStr(opened),
            session_ttl_s=SESSION_TTL_S,
        )
