"""A token bucket per app, per gateway copy: a steady rate with room for short bursts."""

from __future__ import annotations

import time

from byorouter_common import errors


class AppRateLimiter:
    """Refuses an app's request with 429 once it has used up its burst at more than `rps`."""

    __slots__ = ("_buckets", "burst", "rps")

    def __init__(self, rps: float, burst: int) -> None:
        self.rps = rps
        self.burst = max(burst, 1)
        # app id -> (tokens left, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    @property
    def enabled(self) -> bool:
        return self.rps > 0

    def check(self, app_id: str) -> None:
        """Take one token for `app_id`, or raise `ByoError` 429 saying when to come back."""
        if self.rps <= 0:
            return
        now = time.monotonic()
        tokens, counted_at = self._buckets.get(app_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - counted_at) * self.rps)
        if tokens < 1.0:
            self._buckets[app_id] = (tokens, now)
            raise errors.rate_limited(
                "Too many requests for this app; slow down.",
                retry_after=(1.0 - tokens) / self.rps,
            )
        self._buckets[app_id] = (tokens - 1.0, now)
