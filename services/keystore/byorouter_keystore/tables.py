"""Every keystore table as a SQLAlchemy ORM class; the schema itself is made by Alembic migrations.

Every one-time secret of the Connect flow is stored only as its SHA-256 (`*_hash`), so a database
dump hands out nothing an attacker could redeem.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    # Fetch server-made values (timestamps) with RETURNING, so async code never lazy-loads them.
    __mapper_args__ = {"eager_defaults": True}


# --- apps, connections, their credentials, the audit log and usage (migrations 0001, 0002) -----


class App(Base):
    __tablename__ = "apps"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # Kept exactly as registered: redirect URIs are matched byte for byte.
    redirect_uris: Mapped[list[str]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Its server may store its users' keys without Connect (seeing them in transit); off until
    # the operator turns it on (migration 0010).
    headless: Mapped[bool] = mapped_column(Boolean, server_default="false")
    # The provider kinds its users may connect; None allows every kind (migration 0011).
    allowed_providers: Mapped[list[str] | None] = mapped_column(JSONB)
    # Requests a second and burst, for the app and for each of its connections, shared by every
    # gateway copy; None: the gateway's default, 0: off (migration 0015).
    rate_limit_rps: Mapped[float | None] = mapped_column(Float)
    rate_limit_burst: Mapped[int | None] = mapped_column(Integer)
    connection_rate_limit_rps: Mapped[float | None] = mapped_column(Float)
    connection_rate_limit_burst: Mapped[int | None] = mapped_column(Integer)


class AppKey(Base):
    __tablename__ = "app_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    # sha256 of the full key string; the key itself is never stored.
    key_hash: Mapped[bytes] = mapped_column(LargeBinary)
    label: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Connection(Base):
    __tablename__ = "connections"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'revoked')", name="ck_connections_status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), server_default="active")
    fallback_to_default: Mapped[bool] = mapped_column(Boolean, server_default="false")
    # The kinds its connect flow was narrowed to by a pushed authorization request; None: only
    # the app's policy applies. Either way the app's current policy narrows it further.
    allowed_providers: Mapped[list[str] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    # Limits the user set on this app (migration 0014); None: no cap, no list: every model.
    limit_requests_per_day: Mapped[int | None] = mapped_column(BigInteger)
    limit_tokens_per_month: Mapped[int | None] = mapped_column(BigInteger)
    limit_models: Mapped[list[str] | None] = mapped_column(JSONB)


class Credential(Base):
    """One provider of a connection; the secret is envelope-encrypted (see `crypto`)."""

    __tablename__ = "credentials"
    __table_args__ = (
        UniqueConstraint("connection_id", "provider", name="uq_credentials_connection_id"),
        CheckConstraint("status IN ('ok', 'failing')", name="ck_credentials_status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), index=True
    )
    provider: Mapped[str] = mapped_column(String(32))
    priority: Mapped[int] = mapped_column(Integer)
    base_url: Mapped[str | None] = mapped_column(Text)
    preferred_model: Mapped[str | None] = mapped_column(String(200))
    # Masked, e.g. 'sk-...AbCd'; None when the provider needs no key.
    label: Mapped[str | None] = mapped_column(String(64))
    kek_version: Mapped[int] = mapped_column(Integer, index=True)
    wrapped_dek: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    # Migration 0012: which associated data the secret was sealed with (`crypto.BINDING_*`);
    # rows from before it are 1 until keystore re-seals them (`bindings`).
    binding_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), server_default="ok")
    last_error: Mapped[str | None] = mapped_column(Text)
    # selfhosted only: the tunnel to the user's server (migration 0005); `base_url`, if set, is
    # then the direct address used while the tunnel is offline.
    tunnel_id: Mapped[str | None] = mapped_column(
        ForeignKey("tunnels.id", ondelete="SET NULL", name="fk_credentials_tunnel_id")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class AuditEntry(Base):
    """Who did what to which app or connection; `detail` never holds a secret."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    action: Mapped[str] = mapped_column(String(64))
    app_id: Mapped[str | None] = mapped_column(String(64), index=True)
    subject_id: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")


class UsageDaily(Base):
    """A connection's requests and tokens on one provider and model on one day (UTC)."""

    __tablename__ = "usage_daily"

    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    app_id: Mapped[str] = mapped_column(String(64))
    requests: Mapped[int] = mapped_column(BigInteger, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    total_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # Migration 0007: as the provider reported them; part of the prompt and completion counts.
    cached_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # Requests whose answer broke midway; their counts may be the router's estimate.
    partial_requests: Mapped[int] = mapped_column(BigInteger, server_default="0")


class UsageRequest(Base):
    """One recorded request: a report delivered again finds its id here and adds nothing."""

    __tablename__ = "usage_requests"

    request_id: Mapped[str] = mapped_column(Text, primary_key=True)
    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), index=True
    )
    day: Mapped[date] = mapped_column(Date)
    partial: Mapped[bool] = mapped_column(Boolean, server_default="false")
    estimated: Mapped[bool] = mapped_column(Boolean, server_default="false")
    recorded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class LimitCounter(Base):
    """Requests a connection with a daily cap was admitted on one day (UTC), shared by every
    router copy (migration 0014); tokens come from `usage_daily`."""

    __tablename__ = "limit_counters"

    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, server_default="0")


# --- the Connect flow (migration 0003) ---------------------------------------------------------


class AuthorizationCode(Base):
    """A code issued to an app's redirect URI, bound to the app, that URI and a PKCE challenge."""

    __tablename__ = "auth_codes"

    code_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    # The connection the code grants; created (with the keys) when the person said yes.
    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), index=True
    )
    redirect_uri: Mapped[str] = mapped_column(Text)
    code_challenge: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # Set by the first attempt of the code's app, whatever its outcome: the code is spent.
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when that attempt delivered the connection: the same request retried soon after (its
    # answer was lost) gets it again; any other later attempt revokes the connection.
    exchanged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ManageLink(Base):
    """A short-lived, single-use link an app hands its user to manage one connection."""

    __tablename__ = "manage_links"

    token_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), index=True
    )
    return_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ManageSession(Base):
    """The browser session a redeemed manage link became (its token lives in a cookie)."""

    __tablename__ = "manage_sessions"

    session_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), index=True
    )
    return_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class PushedAuthorization(Base):
    """An app server's pushed authorization request (RFC 9126); its request_uri is stored hashed.

    Opened once (`opened_at`), spent by the consent it ends in (`used_at`).
    """

    __tablename__ = "pushed_authorizations"

    request_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    redirect_uri: Mapped[str] = mapped_column(Text)
    state: Mapped[bytes | None] = mapped_column(LargeBinary)
    code_challenge: Mapped[str] = mapped_column(String(64))
    allowed_providers: Mapped[list[str] | None] = mapped_column(JSONB)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    opened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# --- apps' own default providers (migration 0004) ----------------------------------------------

# What the envelope's associated data names as the owner of an app default. A connection id
# ("conn_...") can never take this form, so neither kind of row decrypts in the other's place.
_OWNER_PREFIX = "app-default:"


def app_default_owner(app_id: str) -> str:
    """The owner an app default's secret is sealed to (in place of a connection id)."""
    return _OWNER_PREFIX + app_id


class AppDefaultProvider(Base):
    """The provider an operator set for an app: serves `default/<model>` and last fallbacks."""

    __tablename__ = "app_default_providers"

    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    base_url: Mapped[str | None] = mapped_column(Text)
    # The model `default` alone asks for, and the one a fallback to the default uses.
    model: Mapped[str | None] = mapped_column(String(200))
    # Masked, e.g. 'sk-...AbCd'; None when the provider needs no key.
    label: Mapped[str | None] = mapped_column(String(64))
    kek_version: Mapped[int] = mapped_column(Integer, index=True)
    wrapped_dek: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    # As on `Credential` (migration 0012).
    binding_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    @property
    def owner(self) -> str:
        return app_default_owner(self.app_id)


# --- tunnels to users' own model servers (migration 0005) --------------------------------------


class Tunnel(Base):
    """A tunnel of one connection's self-hosted provider; its tokens are stored as SHA-256 hex."""

    __tablename__ = "tunnels"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str | None] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    # After a rotation: the old token's hash, which opens new sockets until `previous_valid_until`.
    previous_token_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    previous_valid_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The client's X25519 public key (base64url), bound at its first connect.
    public_key: Mapped[str | None] = mapped_column(String(64))
    # What the app said the server has, and what the client last reported it has.
    declared_models: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    models: Mapped[list[str]] = mapped_column(JSONB, server_default="[]")
    client_version: Mapped[str | None] = mapped_column(String(64))
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # As the tunnel service last reported it (migration 0013); a change of it is a webhook event.
    online: Mapped[bool] = mapped_column(Boolean, server_default="false")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TunnelSession(Base):
    """A short-lived session a tunnel client reconnects with instead of its long-lived token."""

    __tablename__ = "tunnel_sessions"

    session_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    tunnel_id: Mapped[str] = mapped_column(ForeignKey("tunnels.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


# --- running keystore copies (migration 0008) ---------------------------------------------------


class KeystoreCopy(Base):
    """A running keystore copy and the KEK version it seals with, confirmed every heartbeat.

    Prune drops a KEK only when every copy confirmed within the lease seals with the newest.
    """

    __tablename__ = "keystore_copies"

    # The copy's discovery id, as `$SRV.PING.keystore` answers it.
    copy_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    active_kek_version: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# --- apps' webhooks and their outbox (migration 0009) ------------------------------------------


class Webhook(Base):
    """A URL an app receives its events at; the signing secret is sealed like a provider key."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    kek_version: Mapped[int] = mapped_column(Integer)
    wrapped_dek: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookDelivery(Base):
    """One event for one webhook: the outbox row, written in the transaction of the change."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')", name="ck_webhook_deliveries_status"
        ),
    )

    # Also the `webhook-id` header: the same on every attempt, so a receiver can drop repeats.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), index=True
    )
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
