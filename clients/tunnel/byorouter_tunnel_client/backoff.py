"""When to dial again after a lost or failed connection: full-jitter exponential backoff.

Full jitter (`uniform(0, min(cap, base * 2**n))`) spreads a fleet of clients that lost the same
service copy, so they do not all return in the same instant. The first few retries are fast,
because most drops are one copy restarting and another is there at once; a connection that stayed
up for a while resets the count, so one blip an hour never waits a minute.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Reconnect delays. Pure: the caller sleeps, and says how long each connection lasted."""

    base_s: float = 1.0
    cap_s: float = 60.0
    fast_retries: int = 3
    fast_cap_s: float = 0.25
    stable_after_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    # Retries since the last stable connection.
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds; counts the attempt."""
        n = self.attempt
        self.attempt += 1
        if n < self.fast_retries:
            return self.rng.uniform(0, self.fast_cap_s)
        exponent = n - self.fast_retries
        # Capping the exponent keeps 2**n finite however long the outage lasts.
        ceiling = self.cap_s if exponent >= 32 else min(self.cap_s, self.base_s * 2**exponent)
        return self.rng.uniform(0, ceiling)

    def connection_lasted(self, uptime_s: float) -> None:
        """A connection that was up at least `stable_after_s` starts the schedule over."""
        if uptime_s >= self.stable_after_s:
            self.reset()

    def reset(self) -> None:
        self.attempt = 0
