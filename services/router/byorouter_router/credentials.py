"""A connection's decrypted provider credentials, cached so the hot path asks keystore rarely.

Entries live for a TTL and are dropped at once when keystore announces the connection changed,
or that its app's default provider did (every connection of that app then goes).
Concurrent requests for a connection that is not cached share one keystore lookup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from byorouter_common.contracts.events import (
    AppDefaultChangedEvent,
    AppPolicyChangedEvent,
    ConnectionChangedEvent,
)
from byorouter_common.contracts.keystore import ConnectionRef, ResolvedConnection
from byorouter_common.contracts.keystore.user_limits import UserLimits
from byorouter_router.cooldowns import APP_DEFAULT_SCOPE, Upstream, credential_fingerprint
from byorouter_router.fallback import APP_DEFAULT, Candidate, FallbackTarget
from byorouter_router.providers.base import ProviderCredential

Lookup = Callable[[ConnectionRef], Awaitable[ResolvedConnection]]

# Past this many cached connections, expired entries are swept on the next insert.
_SWEEP_AT = 10_000


@dataclass(frozen=True, slots=True)
class ConnectionCredentials:
    """What the router knows of one connection: its providers, best priority first."""

    connection_id: str
    app_id: str
    fallback_to_default: bool
    providers: dict[str, ProviderCredential]
    # The same providers as fallback targets (same order): preferred model, whether failing.
    targets: dict[str, FallbackTarget] = field(default_factory=dict)
    # The app's own default provider (its `provider` is the kind: openai, anthropic, ...) and
    # its configured model; it serves `default/<model>`, and falls back only if allowed.
    app_default: ProviderCredential | None = None
    # Providers the connection holds that the app's provider policy no longer allows.
    blocked: frozenset[str] = frozenset()
    # The user's limits on this app; None for most connections.
    limits: UserLimits | None = None

    def is_failing(self, provider: str) -> bool:
        """Whether keystore has this provider's key marked as rejected."""
        target = self.targets.get(provider)
        return target is not None and target.failing

    @property
    def provider_names(self) -> list[str]:
        return list(self.providers)

    def upstream(self, candidate: Candidate) -> Upstream:
        """Whose failures a candidate's count with (`cooldowns.py`).

        A user's provider: this connection's credential for it. The app's default: its key,
        whichever connection falls back to it, as that key's limits are what a 429 is about.
        """
        if candidate.provider == APP_DEFAULT and self.app_default is not None:
            credential: ProviderCredential | None = self.app_default
            kind, scope = self.app_default.provider, APP_DEFAULT_SCOPE
        else:
            credential = self.providers.get(candidate.provider)
            kind, scope = candidate.provider, self.connection_id
        if credential is None:
            return Upstream(kind, scope, "", candidate.model)
        key = credential.api_key.get_secret_value() if credential.api_key is not None else None
        return Upstream(
            kind,
            scope,
            credential_fingerprint(key, credential.base_url, credential.tunnel_id),
            candidate.model,
        )

    @classmethod
    def from_resolved(cls, resolved: ResolvedConnection) -> ConnectionCredentials:
        providers: dict[str, ProviderCredential] = {}
        targets: dict[str, FallbackTarget] = {}
        for p in sorted(resolved.providers, key=lambda p: p.priority):
            # Several credentials of one provider: the best priority one answers.
            if p.provider in providers:
                continue
            providers[p.provider] = ProviderCredential(
                provider=p.provider,
                api_key=p.api_key,
                base_url=p.base_url,
                preferred_model=p.preferred_model,
                tunnel_id=p.tunnel_id,
                tunnel_public_key=p.tunnel_public_key,
            )
            targets[p.provider] = FallbackTarget(p.preferred_model, p.status == "failing")
        default = resolved.app_default
        return cls(
            resolved.connection_id,
            resolved.app_id,
            resolved.fallback_to_default,
            providers,
            targets,
            ProviderCredential(
                provider=default.provider,
                api_key=default.api_key,
                base_url=default.base_url,
                preferred_model=default.preferred_model,
            )
            if default is not None
            else None,
            frozenset(resolved.blocked_providers),
            resolved.limits,
        )


class CredentialCache:
    def __init__(self, lookup: Lookup, ttl_s: float) -> None:
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._entries: dict[tuple[str, str], tuple[float, ConnectionCredentials]] = {}
        self._pending: dict[tuple[str, str], asyncio.Future[ConnectionCredentials]] = {}
        # Bumped by every invalidation: a lookup that started before one must not be cached.
        self._epoch = 0

    async def resolve(self, app_id: str, connection_id: str) -> ConnectionCredentials:
        """The connection's credentials; keystore's 404 (not found, or another app's) raises."""
        key = (app_id, connection_id)
        loop = asyncio.get_running_loop()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > loop.time():
            return entry[1]
        while (pending := self._pending.get(key)) is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if pending.cancelled() and task is not None and not task.cancelling():
                    continue  # the request doing the lookup went away; look up ourselves
                raise
        return await self._fetch(key, loop)

    async def _fetch(
        self, key: tuple[str, str], loop: asyncio.AbstractEventLoop
    ) -> ConnectionCredentials:
        shared: asyncio.Future[ConnectionCredentials] = loop.create_future()
        # Nobody may be waiting: mark a failure as seen so asyncio does not warn about it.
        shared.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending[key] = shared
        epoch = self._epoch
        try:
            resolved = await self._lookup(ConnectionRef(app_id=key[0], connection_id=key[1]))
            credentials = ConnectionCredentials.from_resolved(resolved)
        except asyncio.CancelledError:
            shared.cancel()
            raise
        except Exception as exc:
            shared.set_exception(exc)
            raise
        finally:
            if self._pending.get(key) is shared:
                del self._pending[key]
        shared.set_result(credentials)
        if epoch == self._epoch and self._ttl_s > 0:
            if len(self._entries) >= _SWEEP_AT:
                self._sweep(loop.time())
            self._entries[key] = (loop.time() + self._ttl_s, credentials)
        return credentials

    def _sweep(self, now: float) -> None:
        for key in [k for k, (expires, _) in self._entries.items() if expires <= now]:
            del self._entries[key]

    def invalidate(self, app_id: str, connection_id: str) -> None:
        self._epoch += 1
        self._entries.pop((app_id, connection_id), None)

    def invalidate_app(self, app_id: str) -> None:
        self._epoch += 1
        for key in [k for k in self._entries if k[0] == app_id]:
            del self._entries[key]

    async def on_connection_changed(self, event: ConnectionChangedEvent) -> None:
        self.invalidate(event.app_id, event.connection_id)

    async def on_app_default_changed(self, event: AppDefaultChangedEvent) -> None:
        self.invalidate_app(event.app_id)

    async def on_app_policy_changed(self, event: AppPolicyChangedEvent) -> None:
        self.invalidate_app(event.app_id)
