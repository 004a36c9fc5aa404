"""App API key authentication: parse locally, ask keystore once, trust the answer for a while.

A key is `byo_sk_<key_id>_<secret>`. A malformed or missing key is refused without a bus call.
Keystore gets the key id and the SHA-256 of the whole key, never the key; its answer is cached per
key hash for `ttl_s`, and an `APP_KEY_REVOKED` event drops the key from every gateway copy at once
(an `APP_LIMITS_CHANGED` event drops the app's keys, so the next request brings its new limits).
Concurrent first requests with the same key share one keystore call. Refusals are counted per
client IP: an IP that has used up its failures gets 429 before its next key is looked up.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from byorouter_common import errors
from byorouter_common.bus import Bus
from byorouter_common.contracts import events
from byorouter_common.contracts import keystore as ks
from byorouter_common.errors import ByoError
from byorouter_common.rate_limit import TokenBuckets

log = logging.getLogger(__name__)

V = TypeVar("V")

_BEARER: Final = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +(byo_sk_([a-z0-9]{12})_[A-Za-z0-9]{43})$")
# A refused key hash is refused again without asking keystore for this long: it keeps a client
# hammering with a wrong key off the database, and is short enough that nobody waits on it.
REFUSAL_TTL_S: Final = 2.0


def parse_app_key(authorization: str | None) -> tuple[str, str] | None:
    """(key id, full key) from an `Authorization: Bearer byo_sk_...` header, or None."""
    if not authorization:
        return None
    match = _BEARER.match(authorization)
    if match is None:
        return None
    return match.group(2), match.group(1)


@dataclass(frozen=True, slots=True)
class _Trusted:
    principal: ks.AppPrincipal
    expires_at: float


class AppKeyAuth:
    """Verifies app keys with keystore and caches the app each key belongs to."""

    def __init__(
        self,
        bus: Callable[[], Bus],
        *,
        ttl_s: float = 30.0,
        max_entries: int = 10_000,
        failures_per_ip_per_min: int = 30,
    ) -> None:
        self._bus = bus
        # Only refusals spend it, so an app server sending good keys is never slowed down.
        self.failures_per_ip = TokenBuckets.per_minute(
            failures_per_ip_per_min, "Too many requests with an invalid API key; wait and retry."
        )
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._trusted: dict[str, _Trusted] = {}
        self._refused: dict[str, float] = {}
        self._in_flight: dict[str, asyncio.Future[ks.AppPrincipal]] = {}
        # Bumped on every revocation (and change of limits), so an answer that was on its way
        # meanwhile is used once but never cached.
        self._revocations = 0

    async def authenticate(self, authorization: str | None, client_ip: str) -> ks.AppPrincipal:
        """The app behind the `Authorization` header; `ByoError` 401 if there is none, 429 if
        `client_ip` has had too many refusals lately (then nothing is looked up)."""
        parsed = parse_app_key(authorization)
        if parsed is None:
            self.failures_per_ip.check(client_ip)
            self.failures_per_ip.spend(client_ip)
            raise errors.unauthorized()
        key_id, key = parsed
        key_hash = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        trusted = self._trusted.get(key_hash)
        if trusted is not None:
            if trusted.expires_at > now:
                return trusted.principal
            del self._trusted[key_hash]
        self.failures_per_ip.check(client_ip)
        try:
            return await self._look_up(key_id, key_hash, now)
        except ByoError as exc:
            if exc.status == 401:
                self.failures_per_ip.spend(client_ip)
            raise

    async def _look_up(self, key_id: str, key_hash: str, now: float) -> ks.AppPrincipal:
        refused_until = self._refused.get(key_hash)
        if refused_until is not None:
            if refused_until > now:
                raise errors.unauthorized()
            del self._refused[key_hash]
        pending = self._in_flight.get(key_hash)
        if pending is None:
            pending = asyncio.ensure_future(self._ask_keystore(key_id, key_hash))
            self._in_flight[key_hash] = pending
            pending.add_done_callback(lambda _: self._in_flight.pop(key_hash, None))
        # Shielded: one impatient client going away must not fail the others waiting on it.
        return await asyncio.shield(pending)

    async def _ask_keystore(self, key_id: str, key_hash: str) -> ks.AppPrincipal:
        revocations = self._revocations
        try:
            principal = await self._bus().request(
                ks.APP_AUTHENTICATE, ks.AppAuthenticate(key_id=key_id, key_hash=key_hash)
            )
        except ByoError as exc:
            if exc.status != 401:
                raise  # keystore down or slow: say so, and remember nothing
            self._remember(self._refused, key_hash, time.monotonic() + REFUSAL_TTL_S)
            raise errors.unauthorized() from None
        if self.ttl_s > 0 and revocations == self._revocations:
            self._remember(
                self._trusted, key_hash, _Trusted(principal, time.monotonic() + self.ttl_s)
            )
        return principal

    def _remember(self, cache: dict[str, V], key_hash: str, value: V) -> None:
        if len(cache) >= self.max_entries:
            # Oldest first: dicts keep insertion order, which is close enough to LRU here.
            cache.pop(next(iter(cache)))
        cache[key_hash] = value

    async def on_key_revoked(self, event: events.AppKeyRevokedEvent) -> None:
        """Drop every cached verdict for the revoked key, so the next request is refused."""
        self._revocations += 1
        stale = [h for h, t in self._trusted.items() if t.principal.key_id == event.key_id]
        for key_hash in stale:
            del self._trusted[key_hash]
        log.debug(
            "app key revoked; dropped %d cached entries", len(stale), extra={"key_id": event.key_id}
        )

    async def on_app_limits_changed(self, event: events.AppLimitsChangedEvent) -> None:
        """Drop the app's cached keys: its next request asks keystore and brings the limits."""
        self._revocations += 1
        stale = [h for h, t in self._trusted.items() if t.principal.app_id == event.app_id]
        for key_hash in stale:
            del self._trusted[key_hash]
        log.debug(
            "app limits changed; dropped %d cached entries",
            len(stale),
            extra={"app_id": event.app_id},
        )
