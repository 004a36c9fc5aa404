"""What gateway copies share on the bus besides calls: the bucket their rate limits live in."""

from __future__ import annotations

from typing import Final

from byorouter_common.contracts.base import KeyValueBucket

# One entry per limited key (`app.<app id>`, `conn.<app id>.<connection id>`): the tokens left
# and when they were counted. An idle key's entry expires; a missing entry is a full bucket, so
# that is only wrong for a limit that takes over an hour to refill (decision 0021).
RATE_LIMITS: Final = KeyValueBucket(
    "BYOROUTER_RATE_LIMITS",
    "Token buckets of the per-app and per-connection rate limits every gateway copy shares.",
    ttl_s=3600.0,
    max_bytes=64 * 1024 * 1024,
)
