"""Consent and authorization codes: a person's yes becomes a connection and a code for the app.

The code is bound to the app, its redirect URI and a PKCE challenge, and can be exchanged once.
The keys are stored at consent, before the app comes for the code: a code that expires without
its app ever trying it takes its connection with it (revoked, keys erased), on a schedule.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from pydantic import SecretStr
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from byorouter_common import errors
from byorouter_common.bus import serve
from byorouter_common.contracts.keystore import ConnectionInfo
from byorouter_common.contracts.keystore import connect_flow as cn
from byorouter_common.errors import ByoError
from byorouter_keystore.app_default import offers_default_provider
from byorouter_keystore.connect_flow.one_time import (
    expires_in,
    new_one_time_secret,
    purge_expired,
    secret_hash,
)
from byorouter_keystore.connections import create_connection, delete_connection, get_connection
from byorouter_keystore.crypto import KeyringStore
from byorouter_keystore.provider_policy import in_order, policy_of, spend_authorization
from byorouter_keystore.shared import Handlers, audit, connection_info, get_app
from byorouter_keystore.tables import App, AuthorizationCode, Connection, Credential, Tunnel
from byorouter_keystore.user_limits import set_limits

log = logging.getLogger(__name__)

# How long after a successful exchange the very same request is answered again: enough for an
# app to retry an answer it lost, short enough that a stolen code and verifier is still noticed.
EXCHANGE_RETRY_WINDOW: Final = timedelta(seconds=60)


def s256(code_verifier: str) -> str:
    """The PKCE S256 challenge of a verifier: unpadded base64url of its SHA-256."""
    digest = hashlib.sha256(code_verifier.encode("ascii", errors="replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def invalid_grant() -> ByoError:
    # One answer for every reason, so a caller learns nothing about which check failed.
    return errors.bad_request(
        "The authorization code is invalid, expired or already used, or it was issued to "
        "another app or redirect URI, or the code verifier does not match.",
        code="invalid_grant",
    )


@dataclass(frozen=True)
class IssuedCode:
    code: str
    expires_at: datetime
    connection: Connection
    credentials: list[Credential]


async def issue_code(
    session: AsyncSession, keyring: KeyringStore, grant: cn.AuthorizationGrant
) -> IssuedCode:
    """Store the person's keys as a new connection and issue the code that grants it."""
    app = await get_app(session, grant.client_id)
    registered = any(_same(grant.redirect_uri, uri) for uri in app.redirect_uris)
    if not registered or cn.redirect_uri_problem(grant.redirect_uri) is not None:
        raise errors.bad_request(
            "redirect_uri is not registered for this app.", code="invalid_redirect_uri"
        )
    narrowed = None
    redirect_uri, code_challenge = grant.redirect_uri, grant.code_challenge
    if grant.request_uri is not None:
        # What the app's server pushed wins over anything the browser carried.
        pushed = await spend_authorization(session, app, grant.request_uri.get_secret_value())
        narrowed = pushed.allowed_providers
        redirect_uri, code_challenge = pushed.redirect_uri, pushed.code_challenge
    fallback = grant.fallback_to_default and await offers_default_provider(session, app)
    connection, credentials = await create_connection(
        session,
        keyring,
        app.id,
        grant.providers,
        fallback,
        grant.selfhosted_tunnel,
        narrowed_policy=narrowed,
    )
    if grant.limits is not None and grant.limits.any:
        set_limits(session, connection, grant.limits)
    await purge_expired(session)
    code = new_one_time_secret()
    expires_at = await session.scalar(
        insert(AuthorizationCode)
        .values(
            code_hash=secret_hash(code),
            app_id=app.id,
            connection_id=connection.id,
            redirect_uri=redirect_uri,
            code_challenge=code_challenge,
            expires_at=expires_in(grant.code_ttl_s),
        )
        .returning(AuthorizationCode.expires_at)
    )
    assert expires_at is not None
    audit(session, "code.issued", app.id, connection.id)
    return IssuedCode(code, expires_at, connection, credentials)


@dataclass(frozen=True)
class ExchangeOutcome:
    """What an exchange did: the connection it delivered, or the one it had to revoke, or neither.

    The caller commits first and only then announces a revocation and refuses with invalid_grant,
    so the revocation is never rolled back with the refusal.
    """

    connection: tuple[Connection, list[Credential]] | None = None
    revoked_connection_id: str | None = None


async def exchange_code(
    session: AsyncSession, app_id: str, code: str, redirect_uri: str, code_verifier: str
) -> ExchangeOutcome:
    """Redeem `code` for its connection, once, for the app it was issued to.

    A code is spent by the first attempt of its own app whatever that attempt's outcome: a
    wrong verifier or redirect URI revokes the connection (it can never be delivered now), and
    so does any later attempt (RFC 9700 4.1.2: a reused code means someone else has it), except
    the same request repeated within `EXCHANGE_RETRY_WINDOW` of its success: the app's first
    answer may have been lost, and only that app holds the verifier. Another app's attempt
    touches nothing.
    """
    code_hash = secret_hash(code)
    claimed = (
        await session.execute(
            update(AuthorizationCode)
            .where(
                AuthorizationCode.code_hash == code_hash,
                AuthorizationCode.app_id == app_id,
                AuthorizationCode.used_at.is_(None),
            )
            .values(used_at=func.now())
            .returning(
                AuthorizationCode.connection_id,
                AuthorizationCode.redirect_uri,
                AuthorizationCode.code_challenge,
                (AuthorizationCode.expires_at > func.now()).label("live"),
            )
        )
    ).first()
    if claimed is None:
        return await _exchange_again(session, app_id, code_hash, redirect_uri, code_verifier)
    matches = (
        bool(claimed.live)
        and _same(claimed.redirect_uri, redirect_uri)
        and _same(claimed.code_challenge, s256(code_verifier))
    )
    if not matches:
        revoked = await _revoke(session, app_id, claimed.connection_id)
        return ExchangeOutcome(revoked_connection_id=revoked)
    try:
        delivered = await get_connection(session, app_id, claimed.connection_id)
    except ByoError:
        return ExchangeOutcome()  # disconnected before the app came for it
    await session.execute(
        update(AuthorizationCode)
        .where(AuthorizationCode.code_hash == code_hash)
        .values(exchanged_at=func.now())
    )
    audit(session, "code.exchanged", app_id, claimed.connection_id)
    return ExchangeOutcome(connection=delivered)


async def _exchange_again(
    session: AsyncSession, app_id: str, code_hash: bytes, redirect_uri: str, code_verifier: str
) -> ExchangeOutcome:
    """A later attempt at a spent code: the same request's retry, or a reuse that revokes."""
    spent = (
        await session.execute(
            select(
                AuthorizationCode.connection_id,
                AuthorizationCode.redirect_uri,
                AuthorizationCode.code_challenge,
                (AuthorizationCode.exchanged_at > func.now() - EXCHANGE_RETRY_WINDOW).label(
                    "retry"
                ),
            ).where(
                AuthorizationCode.code_hash == code_hash,
                AuthorizationCode.app_id == app_id,
                AuthorizationCode.used_at.is_not(None),
            )
        )
    ).first()
    if spent is None:
        return ExchangeOutcome()
    retried = (
        bool(spent.retry)
        and _same(spent.redirect_uri, redirect_uri)
        and _same(spent.code_challenge, s256(code_verifier))
    )
    if not retried:
        return ExchangeOutcome(
            revoked_connection_id=await _revoke(session, app_id, spent.connection_id)
        )
    try:
        delivered = await get_connection(session, app_id, spent.connection_id)
    except ByoError:
        return ExchangeOutcome()  # disconnected since
    audit(session, "code.exchange_retried", app_id, spent.connection_id)
    return ExchangeOutcome(connection=delivered)


async def _revoke(session: AsyncSession, app_id: str, connection_id: str) -> str | None:
    """Disconnect a connection a spent code granted; None if it was already gone."""
    try:
        await delete_connection(session, app_id, connection_id)
    except ByoError:
        return None
    audit(session, "code.reused", app_id, connection_id)
    return connection_id


@dataclass(frozen=True)
class PurgedConnection:
    connection_id: str
    app_id: str
    tunnels: list[Tunnel]


async def purge_unexchanged(session: AsyncSession) -> list[PurgedConnection]:
    """Revoke every connection whose code expired without its app ever trying it.

    The code is marked used in the same statement, so of several keystore copies purging at
    once each connection is purged by exactly one.
    """
    expired = (
        await session.execute(
            update(AuthorizationCode)
            .where(
                AuthorizationCode.used_at.is_(None),
                AuthorizationCode.expires_at <= func.now(),
            )
            .values(used_at=func.now())
            .returning(AuthorizationCode.app_id, AuthorizationCode.connection_id)
        )
    ).all()
    purged: list[PurgedConnection] = []
    for app_id, connection_id in expired:
        try:
            tunnels = await delete_connection(session, app_id, connection_id)
        except ByoError:
            continue  # disconnected already
        audit(session, "code.expired_unexchanged", app_id, connection_id)
        purged.append(PurgedConnection(connection_id, app_id, tunnels))
    return purged


async def consent_app(session: AsyncSession, app: App) -> cn.ConsentApp:
    """The app as the consent page shows it."""
    return cn.ConsentApp(
        app_id=app.id,
        client_id=app.client_id,
        name=app.name,
        redirect_uris=app.redirect_uris,
        offers_default_provider=await offers_default_provider(session, app),
        allowed_providers=in_order(policy_of(app)),
    )


# --- bus handlers -------------------------------------------------------------------------------


class ConsentHandlers(Handlers):
    """The consent page's app, the person's yes, and the app's code exchange."""

    def register(self) -> None:
        broker, discovery = self.runtime.broker, self.runtime.discovery
        serve(broker, cn.CONSENT_APP_GET, self.consent_app_get, discovery=discovery)
        serve(broker, cn.AUTHORIZE, self.authorize, discovery=discovery)
        serve(broker, cn.CODE_EXCHANGE, self.code_exchange, discovery=discovery)
        purging: list[asyncio.Task[None]] = []

        async def start_purging() -> None:
            purging.append(asyncio.create_task(self._purge_forever(), name="purge-unexchanged"))

        async def stop_purging() -> None:
            for task in purging:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        self.runtime.on_started(start_purging)
        self.runtime.on_stop(stop_purging)

    async def _purge_forever(self) -> None:
        interval_s = self.runtime.settings.code_purge_interval_s
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.purge_unexchanged()
            except Exception as exc:  # the database away for a while: try again next time
                log.warning("purging unexchanged codes failed", extra={"error": type(exc).__name__})

    async def purge_unexchanged(self) -> None:
        async with self.sessions.begin() as session:
            purged = await purge_unexchanged(session)
        for connection in purged:
            await self.connection_changed(connection.connection_id, connection.app_id, deleted=True)
            await self.tunnels_revoked(connection.tunnels)
        if purged:
            log.info("purged connections whose code was never exchanged: %d", len(purged))

    async def consent_app_get(self, request: cn.ConsentAppGet) -> cn.ConsentApp:
        async with self.sessions.begin() as session:
            return await consent_app(session, await get_app(session, request.client_id))

    async def authorize(self, request: cn.AuthorizationGrant) -> cn.AuthorizationCode:
        async with self.sessions.begin() as session:
            issued = await issue_code(session, self.keyring, request)
        await self.connection_changed(issued.connection.id, issued.connection.app_id, deleted=False)
        return cn.AuthorizationCode(
            code=SecretStr(issued.code),
            expires_at=issued.expires_at,
            connection_id=issued.connection.id,
        )

    async def code_exchange(self, request: cn.CodeExchange) -> ConnectionInfo:
        async with self.sessions.begin() as session:
            outcome = await exchange_code(
                session,
                request.app_id,
                request.code.get_secret_value(),
                request.redirect_uri,
                request.code_verifier.get_secret_value(),
            )
        if outcome.revoked_connection_id is not None:
            await self.connection_changed(
                outcome.revoked_connection_id, request.app_id, deleted=True
            )
        if outcome.connection is None:
            raise invalid_grant()
        return connection_info(*outcome.connection)
