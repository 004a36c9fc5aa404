"""Bus handlers: contract model in, domain call in one transaction, contract model out.

Events go out only after the transaction has committed, so a cache never drops an entry for a
change that was then rolled back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import SecretStr
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from byorouter_common.bus import consume_event, serve, subscribe_event
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.base import Empty
from byorouter_common.service import ServiceRuntime
from byorouter_keystore import app_default
from byorouter_keystore import repository as repo
from byorouter_keystore.app_default_models import AppDefaultProvider
from byorouter_keystore.connect_repository import check_redirect_uris
from byorouter_keystore.crypto import KeyringStore
from byorouter_keystore.models import App, Connection, Credential, UsageDaily
from byorouter_keystore.settings import KeystoreSettings

log = logging.getLogger(__name__)


def _app_info(app: App, default: AppDefaultProvider | None = None) -> ks.AppInfo:
    return ks.AppInfo(
        app_id=app.id,
        client_id=app.client_id,
        name=app.name,
        redirect_uris=app.redirect_uris,
        created_at=app.created_at,
        has_default_provider=default is not None,
        default_provider=app_default.provider_name(default) if default is not None else None,
        default_provider_label=default.label if default is not None else None,
    )


def _app_default_info(app: App, default: AppDefaultProvider) -> ks.AppDefaultInfo:
    return ks.AppDefaultInfo(
        client_id=app.client_id,
        provider=app_default.provider_name(default),
        label=default.label,
        base_url=default.base_url,
        model=default.model,
        updated_at=default.updated_at,
    )


def _connection_info(connection: Connection, credentials: list[Credential]) -> ks.ConnectionInfo:
    return ks.ConnectionInfo(
        connection_id=connection.id,
        app_id=connection.app_id,
        status="active" if connection.status == "active" else "revoked",
        fallback_to_default=connection.fallback_to_default,
        created_at=connection.created_at,
        providers=[
            ks.ProviderInfo(
                provider=repo.provider_name(c),
                label=c.label,
                base_url=c.base_url,
                preferred_model=c.preferred_model,
                priority=c.priority,
                status="failing" if c.status == "failing" else "ok",
                last_error=c.last_error,
                updated_at=c.updated_at,
            )
            for c in credentials
        ],
    )


def _usage_row(row: UsageDaily) -> ks.UsageRow:
    return ks.UsageRow(
        day=row.day,
        provider=row.provider,
        model=row.model,
        requests=row.requests,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        total_tokens=row.total_tokens,
    )


@dataclass
class KeystoreHandlers:
    """The keystore's endpoints, sharing one session factory and one keyring."""

    runtime: ServiceRuntime[KeystoreSettings]
    sessions: async_sessionmaker[AsyncSession]
    keyring: KeyringStore
    rewrap_batch_size: int

    def register(self) -> None:
        broker, discovery = self.runtime.broker, self.runtime.discovery
        serve(broker, ks.APP_CREATE, self.create_app, discovery=discovery)
        serve(broker, ks.APP_GET, self.get_app, discovery=discovery)
        serve(broker, ks.APP_AUTHENTICATE, self.authenticate_app, discovery=discovery)
        serve(broker, ks.APP_KEY_CREATE, self.create_app_key, discovery=discovery)
        serve(broker, ks.APP_KEY_REVOKE, self.revoke_app_key, discovery=discovery)
        serve(broker, ks.APP_DEFAULT_SET, self.set_app_default, discovery=discovery)
        serve(broker, ks.APP_DEFAULT_CLEAR, self.clear_app_default, discovery=discovery)
        serve(broker, ks.CONNECTION_CREATE, self.create_connection, discovery=discovery)
        serve(broker, ks.CONNECTION_GET, self.get_connection, discovery=discovery)
        serve(broker, ks.CONNECTION_DELETE, self.delete_connection, discovery=discovery)
        serve(broker, ks.CREDENTIALS_RESOLVE, self.resolve_credentials, discovery=discovery)
        serve(broker, ks.USAGE_GET, self.get_usage, discovery=discovery)
        serve(broker, ks.KEYS_ROTATE, self.rotate_keys, discovery=discovery)
        serve(broker, ks.KEYS_PRUNE, self.prune_keys, discovery=discovery)
        serve(broker, ks.KEYS_STATUS, self.keys_status, discovery=discovery)
        subscribe_event(broker, events.KEYRING_ROTATED, self.on_keyring_rotated)
        # Reports the router makes: one copy records each, however many copies run.
        consume_event(broker, events.USAGE, self.on_usage, queue=ks.SERVICE)
        consume_event(broker, events.CREDENTIAL_STATUS, self.on_credential_status, queue=ks.SERVICE)

    # --- apps ---

    async def create_app(self, request: ks.AppCreate) -> ks.AppCreated:
        check_redirect_uris(request.redirect_uris)
        async with self.sessions.begin() as session:
            app, key = await repo.create_app(session, request.name, request.redirect_uris)
        return ks.AppCreated(
            app_id=app.id,
            client_id=app.client_id,
            name=app.name,
            redirect_uris=app.redirect_uris,
            key_id=key.key_id,
            key_label=key.label,
            app_api_key=SecretStr(key.key),
        )

    async def get_app(self, request: ks.AppGet) -> ks.AppInfo:
        async with self.sessions.begin() as session:
            app = await repo.get_app(session, request.client_id)
            return _app_info(app, await app_default.default_of(session, app.id))

    async def authenticate_app(self, request: ks.AppAuthenticate) -> ks.AppPrincipal:
        async with self.sessions.begin() as session:
            app = await repo.authenticate_app(session, request.key_id, request.key_hash)
        return ks.AppPrincipal(
            app_id=app.id, client_id=app.client_id, name=app.name, key_id=request.key_id
        )

    async def create_app_key(self, request: ks.AppKeyCreate) -> ks.AppKeyCreated:
        async with self.sessions.begin() as session:
            app, key = await repo.create_app_key(session, request.client_id)
        return ks.AppKeyCreated(
            client_id=app.client_id,
            key_id=key.key_id,
            key_label=key.label,
            app_api_key=SecretStr(key.key),
        )

    async def revoke_app_key(self, request: ks.AppKeyRevoke) -> ks.AppKeyRevoked:
        async with self.sessions.begin() as session:
            app_id = await repo.revoke_app_key(session, request.key_id)
        await self.runtime.bus.publish_event(
            events.APP_KEY_REVOKED, events.AppKeyRevokedEvent(key_id=request.key_id, app_id=app_id)
        )
        return ks.AppKeyRevoked(key_id=request.key_id, app_id=app_id)

    # --- the app's own default provider ---

    async def set_app_default(self, request: ks.AppDefaultSet) -> ks.AppDefaultInfo:
        async with self.sessions.begin() as session:
            app, default = await app_default.set_default(session, self.keyring, request)
        await self._app_default_changed(app.id)
        return _app_default_info(app, default)

    async def clear_app_default(self, request: ks.AppDefaultClear) -> ks.AppDefaultCleared:
        async with self.sessions.begin() as session:
            app, cleared = await app_default.clear_default(session, request.client_id)
        if cleared:
            await self._app_default_changed(app.id)
        return ks.AppDefaultCleared(client_id=app.client_id, cleared=cleared)

    async def _app_default_changed(self, app_id: str) -> None:
        # Every connection of the app resolves differently now: routers drop them all.
        await self.runtime.bus.publish_event(
            events.APP_DEFAULT_CHANGED, events.AppDefaultChangedEvent(app_id=app_id)
        )

    # --- connections ---

    async def create_connection(self, request: ks.ConnectionCreate) -> ks.ConnectionInfo:
        async with self.sessions.begin() as session:
            connection, credentials = await repo.create_connection(
                session,
                self.keyring,
                request.app_id,
                request.providers,
                request.fallback_to_default,
            )
        await self._connection_changed(connection.id, connection.app_id, deleted=False)
        return _connection_info(connection, credentials)

    async def get_connection(self, request: ks.ConnectionRef) -> ks.ConnectionInfo:
        async with self.sessions.begin() as session:
            connection, credentials = await repo.get_connection(
                session, request.app_id, request.connection_id
            )
        return _connection_info(connection, credentials)

    async def delete_connection(self, request: ks.ConnectionRef) -> ks.ConnectionDeleted:
        async with self.sessions.begin() as session:
            await repo.delete_connection(session, request.app_id, request.connection_id)
        await self._connection_changed(request.connection_id, request.app_id, deleted=True)
        return ks.ConnectionDeleted(connection_id=request.connection_id)

    async def resolve_credentials(self, request: ks.ConnectionRef) -> ks.ResolvedConnection:
        async with self.sessions.begin() as session:
            connection, resolved = await repo.resolve_credentials(
                session, self.keyring, request.app_id, request.connection_id
            )
            default = await app_default.default_of(session, connection.app_id)
        return ks.ResolvedConnection(
            connection_id=connection.id,
            app_id=connection.app_id,
            fallback_to_default=connection.fallback_to_default,
            # Whenever the app has one: the router serves `default/<model>` with it, and falls
            # back to it only if `fallback_to_default` allows.
            app_default=self._resolved_default(default) if default is not None else None,
            providers=[
                ks.ResolvedProvider(
                    provider=repo.provider_name(r.credential),
                    api_key=SecretStr(r.api_key) if r.api_key is not None else None,
                    base_url=r.credential.base_url,
                    preferred_model=r.credential.preferred_model,
                    priority=r.credential.priority,
                    status="failing" if r.credential.status == "failing" else "ok",
                )
                for r in resolved
            ],
        )

    def _resolved_default(self, default: AppDefaultProvider) -> ks.ResolvedProvider:
        api_key = app_default.open_default(self.keyring, default)
        return ks.ResolvedProvider(
            provider=app_default.provider_name(default),
            api_key=SecretStr(api_key) if api_key is not None else None,
            base_url=default.base_url,
            preferred_model=default.model,
            priority=0,
        )

    async def _connection_changed(self, connection_id: str, app_id: str, *, deleted: bool) -> None:
        await self.runtime.bus.publish_event(
            events.CONNECTION_CHANGED,
            events.ConnectionChangedEvent(
                connection_id=connection_id, app_id=app_id, deleted=deleted
            ),
        )

    async def on_credential_status(self, event: events.CredentialStatusEvent) -> None:
        async with self.sessions.begin() as session:
            changed = await repo.set_credential_status(
                session,
                event.app_id,
                event.connection_id,
                event.provider,
                event.status,
                event.last_error if event.status == "failing" else None,
            )
        if changed:
            # The routers' cached copies learn the new status (and stop falling back to it).
            await self._connection_changed(event.connection_id, event.app_id, deleted=False)

    # --- usage ---

    async def on_usage(self, event: events.UsageEvent) -> None:
        try:
            async with self.sessions.begin() as session:
                await repo.record_usage(session, event)
        except IntegrityError:
            # The connection is gone (its app was deleted): there is nobody to bill.
            log.warning(
                "usage for an unknown connection dropped",
                extra={"connection_id": event.connection_id, "request_id": event.request_id},
            )

    async def get_usage(self, request: ks.ConnectionRef) -> ks.UsageReport:
        async with self.sessions.begin() as session:
            rows = await repo.usage_of(session, request.app_id, request.connection_id)
        return ks.UsageReport(
            connection_id=request.connection_id, rows=[_usage_row(r) for r in rows]
        )

    # --- key-encryption keys ---

    async def rotate_keys(self, _: Empty) -> ks.KeysRotated:
        active, result = await repo.rotate_keys(
            self.sessions, self.keyring, self.rewrap_batch_size, self._keyring_rotated
        )
        return ks.KeysRotated(
            active_version=active,
            rewrapped=result.rewrapped,
            app_defaults_rewrapped=result.app_defaults_rewrapped,
        )

    async def _keyring_rotated(self, active_version: int) -> None:
        await self.runtime.bus.publish_event(
            events.KEYRING_ROTATED, events.KeyringRotatedEvent(active_version=active_version)
        )

    async def prune_keys(self, _: Empty) -> ks.KeysPruned:
        async with self.sessions.begin() as session:
            removed = await repo.prune_keys(session, self.keyring)
        return ks.KeysPruned(active_version=self.keyring.current.active, removed_versions=removed)

    async def keys_status(self, _: Empty) -> ks.KeysStatus:
        self.keyring.reload()
        async with self.sessions.begin() as session:
            counts = await repo.kek_versions_in_use(session)
            defaults = await repo.app_default_kek_versions_in_use(session)
        return ks.KeysStatus(
            active_version=self.keyring.current.active,
            versions=self.keyring.current.versions,
            credentials_by_version={str(v): n for v, n in sorted(counts.items())},
            app_defaults_by_version={str(v): n for v, n in sorted(defaults.items())},
        )

    async def on_keyring_rotated(self, event: events.KeyringRotatedEvent) -> None:
        # Every copy, including the one that rotated: cheap, and it keeps them all identical.
        if event.active_version != self.keyring.current.active:
            self.keyring.reload()
