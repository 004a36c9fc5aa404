"""Rate limits per app and per connection, shared by every gateway copy (decision 0021).

Each app has a limit for itself and one for each of its connections (its users); the operator
sets them per app (`byorouter app limits`), and what is not set comes from the gateway's
settings. A refusal is OpenAI's 429 with `Retry-After`, naming the limit and how to raise it.
"""

from __future__ import annotations

from typing import TypeVar

from byorouter_common import errors
from byorouter_common.contracts import keystore as ks
from byorouter_common.shared_limits import Limit, SharedTokenBuckets
from byorouter_gateway.settings import GatewaySettings


class RequestLimits:
    """The app's and the connection's token buckets, with the gateway's defaults."""

    def __init__(self, settings: GatewaySettings, buckets: SharedTokenBuckets) -> None:
        self.buckets = buckets
        self.default_app = Limit(settings.rate_limit_rps, settings.rate_limit_burst)
        self.default_connection = Limit(
            settings.connection_rate_limit_rps, settings.connection_rate_limit_burst
        )

    def app_limit(self, limits: ks.AppRateLimits) -> Limit:
        default = self.default_app
        if limits.rps is None and limits.burst is None:
            return default
        return Limit(_or(limits.rps, default.per_s), _or(limits.burst, default.burst))

    def connection_limit(self, limits: ks.AppRateLimits) -> Limit:
        default = self.default_connection
        if limits.connection_rps is None and limits.connection_burst is None:
            return default
        return Limit(
            _or(limits.connection_rps, default.per_s),
            _or(limits.connection_burst, default.burst),
        )

    async def admit_app(self, principal: ks.AppPrincipal) -> None:
        """Spend one of the app's tokens, or raise its 429."""
        limit = self.app_limit(principal.limits)
        wait = await self.buckets.take(f"app.{principal.app_id}", limit)
        if wait is not None:
            raise errors.rate_limited(
                f"Too many requests for this app: it may send {limit.per_s:g} a second (bursts "
                f"of {limit.burst}), counted across every gateway. Retry after Retry-After "
                "seconds; the operator can raise the limit with `byorouter app limits "
                f"{principal.app_id} --rps N --burst N`.",
                retry_after=wait,
            )

    async def admit_connection(self, principal: ks.AppPrincipal, connection_id: str) -> None:
        """Spend one of the connection's tokens (counted per app), or raise its 429."""
        limit = self.connection_limit(principal.limits)
        wait = await self.buckets.take(f"conn.{principal.app_id}.{connection_id}", limit)
        if wait is not None:
            raise errors.rate_limited(
                "Too many requests for this connection: each of the app's users may send "
                f"{limit.per_s:g} a second (bursts of {limit.burst}), counted across every "
                "gateway. Retry after Retry-After seconds; the operator can raise the limit with "
                f"`byorouter app limits {principal.app_id} --connection-rps N "
                "--connection-burst N`.",
                retry_after=wait,
            )


T = TypeVar("T")


def _or(value: T | None, default: T) -> T:
    return default if value is None else value
