"""The user's limits on what one app may use of their connection, and the shared counters.

Requests are counted at admission, in one conditional upsert that every router copy goes
through, so a cap of N lets exactly N through however many copies serve the app. Tokens are
the usage keystore already records per day (`usage_daily`): a request is refused once the
month's total reached the cap. Periods are UTC days and months.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from byorouter_common.bus import serve
from byorouter_common.contracts.keystore import user_limits as ul
from byorouter_common.errors import ByoError
from byorouter_keystore.shared import Handlers, audit, owned_connection
from byorouter_keystore.tables import Connection, LimitCounter, UsageDaily


def limits_of(connection: Connection) -> ul.UserLimits | None:
    """The connection's limits, or None when the user set none."""
    limits = ul.UserLimits(
        requests_per_day=connection.limit_requests_per_day,
        tokens_per_month=connection.limit_tokens_per_month,
        allowed_models=connection.limit_models or [],
    )
    return limits if limits.any else None


def set_limits(session: AsyncSession, connection: Connection, limits: ul.UserLimits) -> None:
    connection.limit_requests_per_day = limits.requests_per_day
    connection.limit_tokens_per_month = limits.tokens_per_month
    connection.limit_models = limits.allowed_models or None
    audit(
        session,
        "connection.limits_changed",
        connection.app_id,
        connection.id,
        requests_per_day=limits.requests_per_day,
        tokens_per_month=limits.tokens_per_month,
        allowed_models=limits.allowed_models,
    )


def _next_day(today: date) -> datetime:
    return datetime.combine(today + timedelta(days=1), time(), UTC)


def _next_month(today: date) -> datetime:
    first = today.replace(day=1)
    return datetime.combine((first + timedelta(days=32)).replace(day=1), time(), UTC)


async def _requests_on(session: AsyncSession, connection_id: str, day: date) -> int:
    used = await session.scalar(
        select(LimitCounter.requests).where(
            LimitCounter.connection_id == connection_id, LimitCounter.day == day
        )
    )
    return used or 0


async def _tokens_since(session: AsyncSession, connection_id: str, first_day: date) -> int:
    used = await session.scalar(
        select(func.coalesce(func.sum(UsageDaily.total_tokens), 0)).where(
            UsageDaily.connection_id == connection_id, UsageDaily.day >= first_day
        )
    )
    return int(used or 0)


async def limits_status(
    session: AsyncSession, connection: Connection, now: datetime | None = None
) -> ul.LimitsStatus | None:
    """The limits and what is left of them, for the app's GET and the manage page."""
    limits = limits_of(connection)
    if limits is None:
        return None
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    requests = await _requests_on(session, connection.id, today)
    tokens = await _tokens_since(session, connection.id, today.replace(day=1))
    return ul.LimitsStatus(
        **limits.model_dump(),
        requests_today=requests,
        requests_left=None
        if limits.requests_per_day is None
        else max(0, limits.requests_per_day - requests),
        requests_reset_at=_next_day(today),
        tokens_this_month=tokens,
        tokens_left=None
        if limits.tokens_per_month is None
        else max(0, limits.tokens_per_month - tokens),
        tokens_reset_at=_next_month(today),
    )


def limit_reached(what: str, cap: int, resets_at: datetime, now: datetime) -> ByoError:
    when = resets_at.isoformat().replace("+00:00", "Z")
    return ByoError(
        429,
        ul.USER_LIMIT_REACHED,
        f"The user allows this app {cap} {what} through their BYORouter connection, and they "
        f"are used up. The limit resets at {when}; until then the user can raise it on "
        "BYORouter's Manage page.",
        type="rate_limit_error",
        retry_after=max(1.0, (resets_at - now).total_seconds()),
    )


async def admit(
    session: AsyncSession, app_id: str, connection_id: str, now: datetime | None = None
) -> ul.LimitsAdmitted:
    """Count one request, or refuse it with a 429 naming the limit and when it resets."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    today = now.date()
    connection = await owned_connection(session, app_id, connection_id)
    tokens_cap = connection.limit_tokens_per_month
    if tokens_cap is not None:
        used = await _tokens_since(session, connection.id, today.replace(day=1))
        if used >= tokens_cap:
            raise limit_reached("tokens a month", tokens_cap, _next_month(today), now)
    requests_cap = connection.limit_requests_per_day
    if requests_cap is None:
        return ul.LimitsAdmitted(connection_id=connection.id, requests_today=0)
    # One statement, atomic under concurrency: no row is updated once the cap is reached.
    insert = pg_insert(LimitCounter).values(connection_id=connection.id, day=today, requests=1)
    counted = await session.scalar(
        insert.on_conflict_do_update(
            index_elements=[LimitCounter.connection_id, LimitCounter.day],
            set_={"requests": LimitCounter.requests + 1},
            where=LimitCounter.requests < requests_cap,
        ).returning(LimitCounter.requests)
    )
    if counted is None:
        raise limit_reached("requests a day", requests_cap, _next_day(today), now)
    return ul.LimitsAdmitted(connection_id=connection.id, requests_today=counted)


# --- bus handlers -------------------------------------------------------------------------------


class LimitsHandlers(Handlers):
    """The router's admission check; the manage page's change lives with the other changes."""

    def register(self) -> None:
        serve(
            self.runtime.broker,
            ul.LIMITS_ADMIT,
            self.limits_admit,
            discovery=self.runtime.discovery,
        )

    async def limits_admit(self, request: ul.LimitsAdmit) -> ul.LimitsAdmitted:
        async with self.sessions.begin() as session:
            return await admit(session, request.app_id, request.connection_id)
