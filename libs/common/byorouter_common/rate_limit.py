"""Token buckets per key (an app, a client IP), in one process: a steady rate with short bursts.

Each service copy counts on its own (no bus or database round trip per request), so a limit
holds per copy. `take` spends a token for every request; `check` + `spend` let a caller spend
only on failures (wrong keys, bad codes), so honest traffic never uses the budget up.
"""

from __future__ import annotations

import time
from typing import Final

from starlette.requests import HTTPConnection

from byorouter_common import errors

# Beyond this many keys the full buckets are forgotten: they carry no information.
_MAX_KEYS: Final = 100_000


class TokenBuckets:
    """`burst` tokens per key, refilled at `per_s`; an empty bucket answers 429 with Retry-After."""

    __slots__ = ("_buckets", "burst", "message", "per_s")

    def __init__(self, per_s: float, burst: int, message: str) -> None:
        self.per_s = per_s
        self.burst = float(max(burst, 1))
        self.message = message
        # key -> (tokens left, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    @classmethod
    def per_minute(cls, count: int, message: str) -> TokenBuckets:
        """`count` a minute, all of them usable at once."""
        return cls(count / 60.0, count, message)

    @property
    def enabled(self) -> bool:
        return self.per_s > 0

    def _tokens(self, key: str, now: float) -> float:
        tokens, counted_at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - counted_at) * self.per_s)

    def _refuse_if_empty(self, tokens: float) -> None:
        if tokens < 1.0:
            raise errors.rate_limited(self.message, retry_after=(1.0 - tokens) / self.per_s)

    def check(self, key: str) -> None:
        """Raise `ByoError` 429 (saying when to come back) if `key` has no token left."""
        if self.per_s > 0:
            self._refuse_if_empty(self._tokens(key, time.monotonic()))

    def spend(self, key: str) -> None:
        """Use one of `key`'s tokens (it may go below one: the next `check` refuses)."""
        if self.per_s <= 0:
            return
        now = time.monotonic()
        self._buckets[key] = (self._tokens(key, now) - 1.0, now)
        if len(self._buckets) > _MAX_KEYS:
            self._buckets = {
                k: v for k, v in self._buckets.items() if self._tokens(k, now) < self.burst
            }

    def take(self, key: str) -> None:
        """`check`, then `spend`: one token per request, 429 once they are used up."""
        if self.per_s <= 0:
            return
        tokens = self._tokens(key, time.monotonic())
        self._refuse_if_empty(tokens)
        self.spend(key)


def client_ip(connection: HTTPConnection) -> str:
    """Who is asking, as the limits count it: the socket's peer, unless a configured trusted
    proxy said otherwise (`BYOROUTER_TRUSTED_PROXIES`, applied where uvicorn is set up)."""
    return connection.client.host if connection.client is not None else "-"
