"""The table of apps' own default providers: one envelope-encrypted credential per app.

The schema itself is made by migration 0004.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, LargeBinary, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from byorouter_keystore.models import Base

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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    @property
    def owner(self) -> str:
        return app_default_owner(self.app_id)
