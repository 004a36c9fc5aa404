"""The Connect flow's tables: authorization codes, manage links and manage sessions.

Every one-time secret is stored only as its SHA-256 (`*_hash`), so a database dump hands out
nothing an attacker could redeem. The schema itself is made by migration 0003.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, LargeBinary, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from byorouter_keystore.models import Base


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
    # Set by the one exchange that wins; a later attempt finds it set and revokes the connection.
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


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
