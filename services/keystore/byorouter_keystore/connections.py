"""Connections and their credentials: a user's provider keys for one app, envelope-encrypted.

Each credential's key is sealed under its own data key, bound to its connection, provider and
destination (see `crypto`); `resolve_credentials` is the one place that opens them, for the
router, and hands out only the destination the key opened with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import SecretStr
from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from byorouter_common import errors
from byorouter_common.bus import consume_event, serve
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.tunnel import is_tunnel_id
from byorouter_common.redact import mask_key
from byorouter_keystore import ids
from byorouter_keystore.app_default import default_of, open_default
from byorouter_keystore.crypto import Destination, KeyringStore
from byorouter_keystore.provider_policy import (
    check_allowed,
    connection_policy,
    policy_of,
    routable,
)
from byorouter_keystore.shared import (
    BASE_URL_RULE,
    KEY_REQUIRED,
    Handlers,
    app_not_found,
    audit,
    connection_info,
    credentials_of,
    destination_of,
    is_plain_http_url,
    open_credential,
    owned_connection,
    provider_name,
    rowcount,
    seal_api_key,
    store_sealed,
)
from byorouter_keystore.tables import App, AppDefaultProvider, Connection, Credential, Tunnel
from byorouter_keystore.tunnels import revoke_tunnels_of_connection, routable_tunnels
from byorouter_keystore.user_limits import limits_of, limits_status
from byorouter_keystore.webhooks import enqueue_connection_event, enqueue_credential_transition

log = logging.getLogger(__name__)

# Column width: a longer provider message is cut, never refused.
_MAX_LAST_ERROR = 500


def validate_providers(
    providers: Sequence[ks.ProviderCredentialInput], *, tunnel_pending: bool = False
) -> None:
    """Refuse what could never work; messages name the field, never the value given."""
    seen: set[str] = set()
    for index, p in enumerate(providers):
        field = f"providers[{index}]"
        if p.provider in seen:
            raise errors.bad_request(
                f"{field}: provider {p.provider} is listed more than once.",
                param=f"{field}.provider",
            )
        seen.add(p.provider)
        key = p.api_key.get_secret_value().strip() if p.api_key is not None else ""
        if p.provider in KEY_REQUIRED and not key:
            raise errors.bad_request(
                f"{field}.api_key is required for {p.provider}.", param=f"{field}.api_key"
            )
        if p.tunnel_id is not None and (
            p.provider != "selfhosted" or not is_tunnel_id(p.tunnel_id)
        ):
            raise errors.bad_request(
                f"{field}.tunnel_id must be a tunnel id (tun_...), for selfhosted only.",
                param=f"{field}.tunnel_id",
            )
        # A tunnel is a destination of its own: the direct URL is then only its fallback.
        if (
            p.provider == "selfhosted"
            and not p.base_url
            and p.tunnel_id is None
            and not tunnel_pending
        ):
            raise errors.bad_request(
                f"{field}.base_url is required for selfhosted without a tunnel.",
                param=f"{field}.base_url",
            )
        if p.base_url is not None and not is_plain_http_url(p.base_url):
            raise errors.bad_request(
                f"{field}.base_url {BASE_URL_RULE}.",
                param=f"{field}.base_url",
            )


async def create_connection(
    session: AsyncSession,
    keyring: KeyringStore,
    app_id: str,
    providers: Sequence[ks.ProviderCredentialInput],
    fallback_to_default: bool,
    selfhosted_tunnel: bool = False,
    narrowed_policy: Sequence[str] | None = None,
) -> tuple[Connection, list[Credential]]:
    """`narrowed_policy`: the kinds a pushed authorization request allowed (kept on the row)."""
    validate_providers(providers, tunnel_pending=selfhosted_tunnel)
    for index, p in enumerate(providers):
        if p.tunnel_id is not None:
            # A tunnel belongs to one existing connection: it is made by `tunnel.register`.
            raise errors.bad_request(
                f"providers[{index}].tunnel_id: register a tunnel for the connection once it "
                "exists (POST /api/tunnel/register).",
                param=f"providers[{index}].tunnel_id",
            )
    app = await session.get(App, app_id)
    if app is None:
        raise app_not_found()
    check_allowed(providers, policy_of(app, narrowed_policy), tunnel_pending=selfhosted_tunnel)
    connection = Connection(
        id=ids.new_connection_id(),
        app_id=app_id,
        status="active",
        fallback_to_default=fallback_to_default,
        allowed_providers=list(narrowed_policy) if narrowed_policy is not None else None,
    )
    session.add(connection)
    await session.flush()
    credentials = []
    for priority, p in enumerate(providers):
        key = p.api_key.get_secret_value().strip() if p.api_key is not None else ""
        credential = Credential(
            id=ids.new_credential_id(),
            connection_id=connection.id,
            provider=p.provider,
            priority=priority,
            base_url=p.base_url,
            preferred_model=p.preferred_model,
            label=mask_key(key) if key else None,
            status="ok",
        )
        destination = Destination(p.base_url)
        store_sealed(
            credential, seal_api_key(keyring, key or None, connection.id, p.provider, destination)
        )
        session.add(credential)
        credentials.append(credential)
    await session.flush()
    audit(
        session,
        "connection.created",
        app_id,
        connection.id,
        providers=[p.provider for p in providers],
    )
    return connection, credentials


async def get_connection(
    session: AsyncSession, app_id: str, connection_id: str
) -> tuple[Connection, list[Credential]]:
    connection = await owned_connection(session, app_id, connection_id)
    return connection, await credentials_of(session, connection.id)


async def delete_connection(session: AsyncSession, app_id: str, connection_id: str) -> list[Tunnel]:
    """Revoke the connection and its tunnels and erase the user's keys; a second delete is a 404.

    Returns the tunnels it revoked, for the caller to announce once committed.
    """
    connection = await owned_connection(session, app_id, connection_id, for_update=True)
    connection.status = "revoked"
    erased = await session.execute(
        delete(Credential).where(Credential.connection_id == connection.id)
    )
    tunnels = await revoke_tunnels_of_connection(session, connection.id)
    await enqueue_connection_event(session, app_id, connection.id, disconnected=True)
    audit(
        session,
        "connection.deleted",
        app_id,
        connection.id,
        credentials_erased=rowcount(erased),
        tunnels_revoked=[t.id for t in tunnels],
    )
    return tunnels


@dataclass(frozen=True)
class ResolvedCredential:
    credential: Credential
    api_key: str | None
    # Where the key was sealed to go: the key opened with it, so it is what the router gets.
    destination: Destination
    # The active tunnel the credential routes through, if any.
    tunnel: Tunnel | None = None


async def resolve_credentials(
    session: AsyncSession, keyring: KeyringStore, app_id: str, connection_id: str
) -> tuple[Connection, list[ResolvedCredential]]:
    connection, credentials = await get_connection(session, app_id, connection_id)
    tunnels = await routable_tunnels(session, credentials)
    resolved = [
        ResolvedCredential(
            c,
            open_credential(keyring, c),
            destination_of(c),
            tunnels.get(c.tunnel_id) if c.tunnel_id else None,
        )
        for c in credentials
    ]
    return connection, resolved


async def set_credential_status(
    session: AsyncSession,
    app_id: str,
    connection_id: str,
    provider: str,
    status: str,
    last_error: str | None,
) -> bool:
    """Record that a provider rejected (or accepted again) a key; True if anything changed.

    Only a credential of a connection the app owns is touched. `updated_at` stays: it says when
    the person last changed the credential, and a status is the provider's verdict, not theirs.
    """
    last_error = last_error[:_MAX_LAST_ERROR] if last_error is not None else None
    owned = select(Connection.id).where(Connection.id == connection_id, Connection.app_id == app_id)
    result = await session.execute(
        update(Credential)
        .where(
            Credential.connection_id.in_(owned),
            Credential.provider == provider,
            or_(Credential.status != status, Credential.last_error.is_distinct_from(last_error)),
        )
        .values(status=status, last_error=last_error, updated_at=Credential.updated_at)
    )
    return rowcount(result) > 0


# --- bus handlers -------------------------------------------------------------------------------


class ConnectionHandlers(Handlers):
    """An app's connections, the router's credential look-up and its reports on failing keys."""

    def register(self) -> None:
        broker, discovery = self.runtime.broker, self.runtime.discovery
        serve(broker, ks.CONNECTION_CREATE, self.connection_create, discovery=discovery)
        serve(broker, ks.CONNECTION_GET, self.connection_get, discovery=discovery)
        serve(broker, ks.CONNECTION_DELETE, self.connection_delete, discovery=discovery)
        serve(broker, ks.CREDENTIALS_RESOLVE, self.credentials_resolve, discovery=discovery)
        # A report the router makes: one copy records each, however many copies run.
        consume_event(broker, events.CREDENTIAL_STATUS, self.on_credential_status, queue=ks.SERVICE)

    async def connection_create(self, request: ks.ConnectionCreate) -> ks.ConnectionInfo:
        async with self.sessions.begin() as session:
            connection, credentials = await create_connection(
                session,
                self.keyring,
                request.app_id,
                request.providers,
                request.fallback_to_default,
            )
        await self.connection_changed(connection.id, connection.app_id, deleted=False)
        return connection_info(connection, credentials)

    async def connection_get(self, request: ks.ConnectionRef) -> ks.ConnectionInfo:
        async with self.sessions.begin() as session:
            connection, credentials = await get_connection(
                session, request.app_id, request.connection_id
            )
            limits = await limits_status(session, connection)
        return connection_info(connection, credentials).model_copy(update={"limits": limits})

    async def connection_delete(self, request: ks.ConnectionRef) -> ks.ConnectionDeleted:
        async with self.sessions.begin() as session:
            tunnels = await delete_connection(session, request.app_id, request.connection_id)
        await self.tunnels_revoked(tunnels)
        await self.connection_changed(request.connection_id, request.app_id, deleted=True)
        return ks.ConnectionDeleted(connection_id=request.connection_id)

    async def credentials_resolve(self, request: ks.ConnectionRef) -> ks.ResolvedConnection:
        async with self.sessions.begin() as session:
            connection, resolved = await resolve_credentials(
                session, self.keyring, request.app_id, request.connection_id
            )
            default = await default_of(session, connection.app_id)
            allowed = await connection_policy(session, connection)
        # Filtered here, not in the router: a policy change reaches every copy with the event
        # that drops its cache, and the chat path makes no extra call for it.
        blocked: list[str] = []
        routes: list[tuple[ResolvedCredential, str | None, Tunnel | None]] = []
        for r in resolved:
            route = routable(r.credential.provider, r.destination.base_url, r.tunnel, allowed)
            if route is None:
                blocked.append(provider_name(r.credential))
            else:
                routes.append((r, *route))
        return ks.ResolvedConnection(
            connection_id=connection.id,
            limits=limits_of(connection),
            app_id=connection.app_id,
            fallback_to_default=connection.fallback_to_default,
            # Whenever the app has one: the router serves `default/<model>` with it, and falls
            # back to it only if `fallback_to_default` allows.
            app_default=self._resolved_default(default) if default is not None else None,
            providers=[
                ks.ResolvedProvider(
                    provider=provider_name(r.credential),
                    api_key=SecretStr(r.api_key) if r.api_key is not None else None,
                    base_url=base_url,
                    preferred_model=r.credential.preferred_model,
                    priority=r.credential.priority,
                    status="failing" if r.credential.status == "failing" else "ok",
                    # A revoked (or never registered) tunnel is no tunnel: the router uses the
                    # direct URL, or falls back.
                    tunnel_id=tunnel.id if tunnel is not None else None,
                    tunnel_public_key=tunnel.public_key if tunnel is not None else None,
                )
                for r, base_url, tunnel in routes
            ],
            blocked_providers=blocked,
        )

    def _resolved_default(self, default: AppDefaultProvider) -> ks.ResolvedProvider:
        api_key = open_default(self.keyring, default)
        return ks.ResolvedProvider(
            provider=provider_name(default),
            api_key=SecretStr(api_key) if api_key is not None else None,
            base_url=destination_of(default).base_url,
            preferred_model=default.model,
            priority=0,
        )

    async def on_credential_status(self, event: events.CredentialStatusEvent) -> None:
        async with self.sessions.begin() as session:
            # In the same transaction as the status: the app hears of each change exactly once.
            await enqueue_credential_transition(
                session,
                event.app_id,
                event.connection_id,
                event.provider,
                event.status,
                event.last_error,
            )
            changed = await set_credential_status(
                session,
                event.app_id,
                event.connection_id,
                event.provider,
                event.status,
                event.last_error if event.status == "failing" else None,
            )
        if changed:
            # The routers' cached copies learn the new status (and stop falling back to it).
            await self.connection_changed(event.connection_id, event.app_id, deleted=False)
