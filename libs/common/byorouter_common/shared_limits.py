"""Token buckets that every copy of a service shares, kept in a JetStream key-value bucket.

A request never waits on the bus in the common case: each copy holds a small lease of tokens per
key and spends them locally. When a lease runs out, the copy takes the next chunk from the shared
bucket with one compare-and-set write (the entry's revision), so a busy key costs the bus about
`1 / lease_s` writes a second however many requests it carries, and an idle key costs nothing.
A chunk is `rate x lease_s` tokens, or a tenth of the burst if that is more. A key a copy holds
no lease for gets its first few tokens on credit (`credit`, at most a tenth of the burst) with no
bus call at all, so users who send a request now and then cost the bus nothing; the next lease
takes them from the bucket too, and a key refused lately gets no credit. Unused leases expire
after `lease_ttl_s` and are not given back. So a key can fall below its limit by a chunk per
copy when traffic stops, and go above it by a chunk per copy (tokens leased before the bucket
refilled, or credit no lease recorded), never more.

The shared bucket stores the tokens left and the wall-clock time they were counted at; a copy
adds the refill since then with its own clock, never moving that time backwards, so skewed
clocks give at most one extra burst (a time written in the past refills the bucket early once),
and a copy running ahead makes the others see no refill until their clocks pass its time.

When the bucket cannot be reached, limits fail open to a floor: each copy enforces the whole
limit on its own (two copies then admit up to twice it), logs a warning, and tries the bus again
after `retry_s`. Decision 0021.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from byorouter_common.contracts.base import KeyValueBucket

log = logging.getLogger("byorouter_common.shared_limits")

# Failures of the bus or of JetStream (nats-py's JetStream errors derive from nats.errors.Error).
_BUS_ERRORS: Final = (nats.errors.Error, OSError, asyncio.TimeoutError)
# Beyond this many keys, leases that have expired are forgotten.
_MAX_KEYS: Final = 100_000
# Compare-and-set tries before one lease gives up (only many copies racing on one key get there).
_CAS_TRIES: Final = 8


@dataclass(frozen=True, slots=True)
class Limit:
    """`per_s` requests a second with bursts of up to `burst`; either 0 turns it off."""

    per_s: float
    burst: int

    @property
    def enabled(self) -> bool:
        return self.per_s > 0 and self.burst > 0


OFF: Final = Limit(0.0, 0)


class _Lease:
    """What one copy holds of one key: tokens leased from the shared bucket, or counted
    locally while the bucket is unreachable."""

    __slots__ = (
        "debt",
        "expires_at",
        "known",
        "limit",
        "local_at",
        "pending",
        "refused_at",
        "refused_until",
        "revision",
        "stored",
        "tokens",
    )

    def __init__(self, limit: Limit) -> None:
        # What the tokens were leased under: a changed limit starts a new lease at once.
        self.limit = limit
        self.tokens = 0.0
        self.expires_at = 0.0
        self.refused_until = 0.0
        self.refused_at = -math.inf
        # Tokens given on credit before this copy's first lease; the next lease takes them from
        # the bucket too.
        self.debt = 0
        # The shared entry as this copy last wrote or read it (`known`): (tokens, counted at),
        # None if there was none, and its revision; a write based on it fails if another copy
        # wrote since (then it is read again).
        self.known = False
        self.stored: tuple[float, float] | None = None
        self.revision = 0
        self.local_at = -1.0
        self.pending: asyncio.Future[None] | None = None


def encode(tokens: float, counted_at: float) -> bytes:
    return f"{tokens:.4f} {counted_at:.6f}".encode()


def decode(value: bytes | None) -> tuple[float, float] | None:
    """(tokens, counted at) from an entry; None (a full bucket) if it is not one of ours."""
    try:
        tokens, counted_at = (value or b"").split(b" ")
        parsed = float(tokens), float(counted_at)
    except ValueError:
        return None
    return parsed if all(math.isfinite(v) for v in parsed) else None


class SharedTokenBuckets:
    """Per-key token buckets shared through `bucket` by every copy that uses the same one.

    `take(key, limit)` is the hot path: `None` if the request may go ahead, else the seconds
    until a token is expected (for `Retry-After`). Keys must be NATS subject tokens joined by
    dots (`app.app_123`).
    """

    def __init__(
        self,
        nc: Callable[[], NatsClient],
        bucket: KeyValueBucket,
        *,
        replicas: int = 1,
        lease_s: float = 0.2,
        lease_ttl_s: float = 10.0,
        timeout_s: float = 0.5,
        retry_s: float = 2.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._nc = nc
        self.bucket = bucket
        self.replicas = replicas
        self.lease_s = lease_s
        self.lease_ttl_s = lease_ttl_s
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._wall_clock = wall_clock
        self._leases: dict[str, _Lease] = {}
        self._kv: KeyValue | None = None
        # While the bus is unreachable (monotonic time until the next try), limits are local.
        self._local_until = 0.0
        self.kv_writes = 0

    @property
    def shared(self) -> bool:
        """False while limits are counted per copy because the bucket is unreachable."""
        return time.monotonic() >= self._local_until

    async def start(self) -> None:
        """Open (or create) the bucket; if the bus refuses, limits are local until it answers."""
        try:
            await self._open()
        except _BUS_ERRORS as exc:
            self._go_local(exc)

    async def take(self, key: str, limit: Limit) -> float | None:
        """Spend one of `key`'s tokens under `limit`: None, or how long until there is one."""
        if not limit.enabled:
            return None
        lease = self._leases.get(key)
        if lease is not None and lease.limit == limit:
            now = time.monotonic()
            if lease.tokens >= 1.0 and lease.expires_at > now:
                lease.tokens -= 1.0
                return None
            if lease.refused_until > now:
                return lease.refused_until - now
        return await self._take_slowly(key, limit)

    async def _take_slowly(self, key: str, limit: Limit) -> float | None:
        lease = self._leases.get(key)
        if lease is None:
            if len(self._leases) >= _MAX_KEYS:
                self._forget_expired()
            lease = self._leases[key] = _Lease(limit)
        elif lease.limit != limit:
            # Tokens leased under the old limit are not spent under the new one.
            lease.limit, lease.tokens, lease.refused_until, lease.local_at = limit, 0.0, 0.0, -1.0
            lease.debt = 0
        # Each round either spends a token, refuses, or saw a lease taken from the bucket
        # (which holds finitely many tokens): it ends.
        while True:
            now = time.monotonic()
            if lease.tokens >= 1.0 and lease.expires_at > now:
                lease.tokens -= 1.0
                return None
            if lease.refused_until > now:
                return lease.refused_until - now
            if now < self._local_until:
                return self._take_locally(lease, limit, now)
            if self._on_credit(lease, limit, now):
                return None
            if lease.pending is None:
                lease.pending = asyncio.ensure_future(self._lease(key, limit, lease))
                lease.pending.add_done_callback(lambda _: setattr(lease, "pending", None))
            # Shielded: one caller going away must not cancel the lease the others wait for.
            await asyncio.shield(lease.pending)

    def _on_credit(self, lease: _Lease, limit: Limit, now: float) -> bool:
        """A key this copy holds no lease for, and has not refused lately, gets its first few
        tokens on credit, with no bus call: a user sending one request now and then never
        touches the bucket. The next lease, if one is needed, takes them from the bucket too;
        if none is needed before the credit expires, they are forgiven (at most `credit` per
        `lease_ttl_s` per copy, well below the rate they are a part of)."""
        credit = self.credit(limit)
        if credit < 1 or lease.expires_at > now or lease.pending is not None:
            return False
        if now - lease.refused_at < self.lease_ttl_s:
            return False
        lease.tokens, lease.debt = float(credit - 1), credit
        lease.expires_at = now + self.lease_ttl_s
        return True

    def _take_locally(self, lease: _Lease, limit: Limit, now: float) -> float | None:
        """The floor while the bucket is unreachable: this copy alone holds the whole limit."""
        if lease.local_at < 0:
            lease.tokens, lease.local_at = float(limit.burst), now
        lease.tokens = min(float(limit.burst), lease.tokens + (now - lease.local_at) * limit.per_s)
        lease.local_at = now
        lease.expires_at = self._local_until
        if lease.tokens >= 1.0:
            lease.tokens -= 1.0
            return None
        return (1.0 - lease.tokens) / limit.per_s

    def chunk(self, limit: Limit) -> int:
        """How many tokens one lease takes: `lease_s` worth of the rate or a tenth of the burst,
        whichever is more (a user's burst then costs a few writes), at least one."""
        return max(1, min(limit.burst, max(round(limit.per_s * self.lease_s), limit.burst // 10)))

    def credit(self, limit: Limit) -> int:
        """How many requests may go ahead before a copy's first lease of a key: a chunk, and
        never more than a tenth of the burst (none for a burst under 10)."""
        return min(self.chunk(limit), limit.burst // 10)

    async def _lease(self, key: str, limit: Limit, lease: _Lease) -> None:
        try:
            await self._lease_from_bucket(key, limit, lease)
        except _BUS_ERRORS as exc:
            self._go_local(exc)
            # The bucket may be gone (a NATS restarted with it in memory): open it again next.
            self._kv = None
            lease.known = False

    async def _lease_from_bucket(self, key: str, limit: Limit, lease: _Lease) -> None:
        kv = self._kv or await self._open()
        chunk = self.chunk(limit)
        burst = float(limit.burst)
        # A whole chunk: copies racing for single tokens would write to the bus once per
        # request. What was let through on credit is taken too (unless that credit has expired:
        # then it was forgiven).
        debt = lease.debt if lease.expires_at > time.monotonic() else 0
        for _ in range(_CAS_TRIES):
            if not lease.known:
                await self._read(kv, key, lease)
            now = self._wall_clock()
            if lease.stored is None:  # no entry: a full bucket
                available, counted_at = burst, now
            else:
                tokens, counted_at = lease.stored
                available = min(burst, tokens + max(0.0, now - counted_at) * limit.per_s)
                counted_at = max(counted_at, now)  # never backwards (clock skew)
            if available < debt + chunk:
                lease.refused_at = time.monotonic()
                lease.refused_until = lease.refused_at + (debt + chunk - available) / limit.per_s
                return
            left = available - debt - chunk
            try:
                lease.revision = await kv.update(key, encode(left, counted_at), last=lease.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                lease.known = False  # another copy took some: read what is left, try again
                continue
            self.kv_writes += 1
            lease.stored = (left, counted_at)
            lease.tokens, lease.debt = float(chunk), 0
            lease.local_at = -1.0
            lease.expires_at = time.monotonic() + self.lease_ttl_s
            return
        # Many copies racing on one key: refuse for a moment rather than write again at once.
        lease.refused_at = time.monotonic()
        lease.refused_until = lease.refused_at + self.lease_s / 4

    async def _read(self, kv: KeyValue, key: str, lease: _Lease) -> None:
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            lease.stored, lease.revision = None, 0
        else:
            lease.stored, lease.revision = decode(entry.value), entry.revision or 0
        lease.known = True

    async def _open(self) -> KeyValue:
        js = self._nc().jetstream(timeout=self.timeout_s)
        try:
            kv = await js.key_value(self.bucket.name)
        except nats.js.errors.BucketNotFoundError:
            try:
                kv = await js.create_key_value(
                    KeyValueConfig(
                        bucket=self.bucket.name,
                        description=self.bucket.description,
                        history=1,
                        ttl=self.bucket.ttl_s,
                        max_bytes=self.bucket.max_bytes,
                        storage=StorageType.MEMORY,
                        replicas=self.replicas,
                        # Reads answered by any replica, without a consumer.
                        direct=True,
                    )
                )
            except nats.js.errors.BadRequestError:
                # Another copy created it meanwhile.
                kv = await js.key_value(self.bucket.name)
        if not self.shared:
            log.warning("rate limits are shared again", extra={"bucket": self.bucket.name})
        self._kv = kv
        self._local_until = 0.0
        return kv

    def _go_local(self, exc: BaseException) -> None:
        if self.shared:
            log.warning(
                "rate limits cannot reach their shared bucket; each copy enforces them alone",
                extra={"bucket": self.bucket.name, "error": type(exc).__name__},
            )
        self._local_until = time.monotonic() + self.retry_s

    def _forget_expired(self) -> None:
        now = time.monotonic()
        self._leases = {
            key: lease
            for key, lease in self._leases.items()
            if lease.pending is not None or lease.expires_at > now or lease.refused_until > now
        }
