"""The Connect flow's domain in keystore: consent, codes, their exchange, manage links and sessions.

Plain async functions over an `AsyncSession`, like `repository`, whose connection and credential
functions (and its envelope encryption) they reuse. One-time secrets are 256-bit values from
`secrets`, handed out once and stored as SHA-256. Claiming one is a single atomic
`UPDATE ... WHERE used_at IS NULL RETURNING`, so of two concurrent attempts exactly one wins.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import ColumnElement, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from byorouter_common import errors
from byorouter_common.contracts import connect as cn
from byorouter_common.contracts.keystore import ProviderCredentialInput
from byorouter_common.errors import ByoError
from byorouter_common.redact import mask_key
from byorouter_keystore import app_default, ids
from byorouter_keystore import repository as repo
from byorouter_keystore.connect_models import AuthorizationCode, ManageLink, ManageSession
from byorouter_keystore.crypto import KeyringStore, seal
from byorouter_keystore.models import App, Connection, Credential

# Rows this long past their expiry are deleted when new ones are made; until then a reused
# code is still recognised as reused (and revokes its connection).
_KEEP_EXPIRED: Final = timedelta(hours=1)


def new_one_time_secret() -> str:
    """256 bits from `secrets`, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def s256(code_verifier: str) -> str:
    """The PKCE S256 challenge of a verifier: unpadded base64url of its SHA-256."""
    digest = hashlib.sha256(code_verifier.encode("ascii", errors="replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def check_redirect_uris(uris: Sequence[str]) -> None:
    """Refuse an app registration whose redirect URIs break the rules (`redirect_uri_problem`)."""
    for index, uri in enumerate(uris):
        problem = cn.redirect_uri_problem(uri)
        if problem is not None:
            raise errors.bad_request(
                f"redirect_uris[{index}] {problem}.",
                code="invalid_redirect_uri",
                param=f"redirect_uris[{index}]",
            )


async def offers_default_provider(session: AsyncSession, app: App) -> bool:
    """The app runs an AI of its own that a connection may fall back to."""
    return await app_default.default_of(session, app.id) is not None


def invalid_grant() -> ByoError:
    # One answer for every reason, so a caller learns nothing about which check failed.
    return errors.bad_request(
        "The authorization code is invalid, expired or already used, or it was issued to "
        "another app or redirect URI, or the code verifier does not match.",
        code="invalid_grant",
    )


def session_expired() -> ByoError:
    return ByoError(
        401,
        "session_expired",
        "This manage session has ended. Go back to the app and choose Manage API Keys again.",
    )


def _expires_in(seconds: int) -> ColumnElement[datetime]:
    # The database's clock, so expiry is judged by one clock however many copies run.
    return func.now() + timedelta(seconds=seconds)


# --- consent and codes -------------------------------------------------------------------------


async def consent_app(session: AsyncSession, client_id: str) -> App:
    return await repo.get_app(session, client_id)


@dataclass(frozen=True)
class IssuedCode:
    code: str
    expires_at: datetime
    connection: Connection
    credentials: list[Credential]


async def authorize(
    session: AsyncSession, keyring: KeyringStore, grant: cn.AuthorizationGrant
) -> IssuedCode:
    """Store the person's keys as a new connection and issue the code that grants it."""
    app = await repo.get_app(session, grant.client_id)
    registered = any(_same(grant.redirect_uri, uri) for uri in app.redirect_uris)
    if not registered or cn.redirect_uri_problem(grant.redirect_uri) is not None:
        raise errors.bad_request(
            "redirect_uri is not registered for this app.", code="invalid_redirect_uri"
        )
    fallback = grant.fallback_to_default and await offers_default_provider(session, app)
    connection, credentials = await repo.create_connection(
        session, keyring, app.id, grant.providers, fallback
    )
    await _purge_expired(session)
    code = new_one_time_secret()
    expires_at = await session.scalar(
        insert(AuthorizationCode)
        .values(
            code_hash=secret_hash(code),
            app_id=app.id,
            connection_id=connection.id,
            redirect_uri=grant.redirect_uri,
            code_challenge=grant.code_challenge,
            expires_at=_expires_in(grant.code_ttl_s),
        )
        .returning(AuthorizationCode.expires_at)
    )
    assert expires_at is not None
    repo._audit(session, "code.issued", app.id, connection.id)
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
    so does any later attempt (RFC 9700 4.1.2: a reused code means someone else has it).
    Another app's attempt touches nothing.
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
        reused = await session.scalar(
            select(AuthorizationCode.connection_id).where(
                AuthorizationCode.code_hash == code_hash,
                AuthorizationCode.app_id == app_id,
                AuthorizationCode.used_at.is_not(None),
            )
        )
        if reused is None:
            return ExchangeOutcome()
        return ExchangeOutcome(revoked_connection_id=await _revoke(session, app_id, reused))
    matches = (
        bool(claimed.live)
        and _same(claimed.redirect_uri, redirect_uri)
        and _same(claimed.code_challenge, s256(code_verifier))
    )
    if not matches:
        revoked = await _revoke(session, app_id, claimed.connection_id)
        return ExchangeOutcome(revoked_connection_id=revoked)
    try:
        delivered = await repo.get_connection(session, app_id, claimed.connection_id)
    except ByoError:
        return ExchangeOutcome()  # disconnected before the app came for it
    repo._audit(session, "code.exchanged", app_id, claimed.connection_id)
    return ExchangeOutcome(connection=delivered)


async def _revoke(session: AsyncSession, app_id: str, connection_id: str) -> str | None:
    """Disconnect a connection a spent code granted; None if it was already gone."""
    try:
        await repo.delete_connection(session, app_id, connection_id)
    except ByoError:
        return None
    repo._audit(session, "code.reused", app_id, connection_id)
    return connection_id


async def _purge_expired(session: AsyncSession) -> None:
    cutoff = func.now() - _KEEP_EXPIRED
    for table in (AuthorizationCode, ManageLink, ManageSession):
        await session.execute(delete(table).where(table.expires_at < cutoff))


# --- manage links and sessions -----------------------------------------------------------------


def _check_return_url(app: App, return_url: str) -> None:
    """A return link must be a redirect-URI-like URL on the origin of one of the app's URIs."""
    problem = cn.redirect_uri_problem(return_url)
    origins = {cn.origin_of(uri) for uri in app.redirect_uris}
    if problem is not None or cn.origin_of(return_url) not in origins:
        raise errors.bad_request(
            "return_url must be an https URL (http only on localhost) on the same origin as one "
            "of the app's redirect URIs, without user info or fragment.",
            param="return_url",
        )


async def create_manage_link(
    session: AsyncSession, request: cn.ManageLinkCreate
) -> tuple[str, datetime]:
    connection = await repo._owned_connection(session, request.app_id, request.connection_id)
    if request.return_url is not None:
        app = await session.get(App, request.app_id)
        if app is None:
            raise repo.app_not_found()
        _check_return_url(app, request.return_url)
    await _purge_expired(session)
    token = new_one_time_secret()
    expires_at = await session.scalar(
        insert(ManageLink)
        .values(
            token_hash=secret_hash(token),
            app_id=request.app_id,
            connection_id=connection.id,
            return_url=request.return_url,
            expires_at=_expires_in(request.ttl_s),
        )
        .returning(ManageLink.expires_at)
    )
    assert expires_at is not None
    repo._audit(session, "manage_link.created", request.app_id, connection.id)
    return token, expires_at


def link_not_usable() -> ByoError:
    return ByoError(
        400,
        "link_expired",
        "This link has expired or was already used. Go back to the app and choose Manage API "
        "Keys again.",
    )


async def redeem_manage_link(
    session: AsyncSession, token: str, session_ttl_s: int
) -> tuple[str, datetime]:
    """Spend a link (once, before it expires) and open a manage session in its place."""
    claimed = (
        await session.execute(
            update(ManageLink)
            .where(
                ManageLink.token_hash == secret_hash(token),
                ManageLink.used_at.is_(None),
                ManageLink.expires_at > func.now(),
            )
            .values(used_at=func.now())
            .returning(ManageLink.app_id, ManageLink.connection_id, ManageLink.return_url)
        )
    ).first()
    if claimed is None:
        raise link_not_usable()
    try:
        await repo._owned_connection(session, claimed.app_id, claimed.connection_id)
    except ByoError:
        raise link_not_usable() from None
    manage_session = new_one_time_secret()
    expires_at = await session.scalar(
        insert(ManageSession)
        .values(
            session_hash=secret_hash(manage_session),
            app_id=claimed.app_id,
            connection_id=claimed.connection_id,
            return_url=claimed.return_url,
            expires_at=_expires_in(session_ttl_s),
        )
        .returning(ManageSession.expires_at)
    )
    assert expires_at is not None
    repo._audit(session, "manage_session.opened", claimed.app_id, claimed.connection_id)
    return manage_session, expires_at


@dataclass(frozen=True)
class ManageContext:
    """A live manage session and what it may change."""

    app: App
    connection: Connection
    return_url: str | None
    expires_at: datetime


async def manage_context(
    session: AsyncSession, manage_session: str, *, for_update: bool = False, active: bool = True
) -> ManageContext:
    """The session's app and connection; 401 once it expired, or (`active`) once disconnected."""
    row = (
        await session.execute(
            select(ManageSession, App)
            .join(App, App.id == ManageSession.app_id)
            .where(
                ManageSession.session_hash == secret_hash(manage_session),
                ManageSession.expires_at > func.now(),
            )
        )
    ).first()
    if row is None:
        raise session_expired()
    manage, app = row
    query = select(Connection).where(
        Connection.id == manage.connection_id, Connection.app_id == app.id
    )
    if for_update:
        query = query.with_for_update()
    connection = await session.scalar(query)
    if connection is None or (active and connection.status != "active"):
        raise session_expired()
    return ManageContext(app, connection, manage.return_url, manage.expires_at)


async def credentials_of(session: AsyncSession, connection_id: str) -> list[Credential]:
    return await repo._credentials_of(session, connection_id)


async def set_provider(
    session: AsyncSession, keyring: KeyringStore, context: ManageContext, p: ProviderCredentialInput
) -> None:
    """Add a provider, or replace one: a new data key seals the new key; the id stays."""
    repo.validate_providers([p])
    connection = context.connection
    existing = {c.provider: c for c in await credentials_of(session, connection.id)}
    key = p.api_key.get_secret_value().strip() if p.api_key is not None else ""
    sealed = seal(keyring.current, repo._secret_document(key or None), connection.id, p.provider)
    current = existing.get(p.provider)
    if current is None:
        session.add(
            Credential(
                id=ids.new_credential_id(),
                connection_id=connection.id,
                provider=p.provider,
                priority=max((c.priority for c in existing.values()), default=-1) + 1,
                base_url=p.base_url,
                preferred_model=p.preferred_model,
                label=mask_key(key) if key else None,
                kek_version=sealed.kek_version,
                wrapped_dek=sealed.wrapped_dek,
                ciphertext=sealed.ciphertext,
                status="ok",
            )
        )
        action = "provider.added"
    else:
        current.base_url = p.base_url
        if p.preferred_model is not None:
            current.preferred_model = p.preferred_model
        current.label = mask_key(key) if key else None
        current.kek_version = sealed.kek_version
        current.wrapped_dek = sealed.wrapped_dek
        current.ciphertext = sealed.ciphertext
        # A new key deserves a fresh verdict from the provider.
        current.status = "ok"
        current.last_error = None
        action = "provider.key_replaced"
    await session.flush()
    repo._audit(session, action, context.app.id, connection.id, provider=p.provider)


async def remove_provider(session: AsyncSession, context: ManageContext, provider: str) -> None:
    connection = context.connection
    credentials = await credentials_of(session, connection.id)
    if not any(c.provider == provider for c in credentials):
        raise errors.not_found("This connection has no such provider.", code="provider_not_found")
    if len(credentials) == 1:
        raise errors.bad_request(
            "A connection needs at least one provider: add another first, or disconnect.",
            code="last_provider",
        )
    await session.execute(
        delete(Credential).where(
            Credential.connection_id == connection.id, Credential.provider == provider
        )
    )
    remaining = [c for c in credentials if c.provider != provider]
    for priority, credential in enumerate(remaining):
        credential.priority = priority
    await session.flush()
    repo._audit(session, "provider.removed", context.app.id, connection.id, provider=provider)


async def set_preferences(
    session: AsyncSession, context: ManageContext, request: cn.PreferencesSet
) -> None:
    connection = context.connection
    credentials = {c.provider: c for c in await credentials_of(session, connection.id)}
    if len(set(request.order)) != len(request.order) or set(request.order) != set(credentials):
        raise errors.bad_request(
            "order must list every provider of the connection exactly once.", param="order"
        )
    for priority, provider in enumerate(request.order):
        credentials[provider].priority = priority
    for provider, model in request.preferred_models.items():
        if provider in credentials:
            model = (model or "").strip()
            if len(model) > 200:
                raise errors.bad_request(
                    "A preferred model id is at most 200 characters.", param="preferred_models"
                )
            credentials[provider].preferred_model = model or None
    connection.fallback_to_default = request.fallback_to_default and (
        await offers_default_provider(session, context.app)
    )
    await session.flush()
    repo._audit(session, "connection.preferences_changed", context.app.id, connection.id)


async def disconnect(session: AsyncSession, context: ManageContext) -> None:
    """Revoke the connection and erase its keys; the session stays only to show the done page."""
    await repo.delete_connection(session, context.app.id, context.connection.id)
    await session.execute(
        update(ManageLink)
        .where(ManageLink.connection_id == context.connection.id, ManageLink.used_at.is_(None))
        .values(used_at=func.now())
    )
