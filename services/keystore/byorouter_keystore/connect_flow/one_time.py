"""The Connect flow's one-time secrets: 256 bits, handed out once, stored only as SHA-256.

A database dump thus hands out nothing an attacker could redeem. Claiming a secret is a single
atomic `UPDATE ... WHERE used_at IS NULL RETURNING`, so of two concurrent attempts exactly one
wins; expiry is judged by the database's clock.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import ColumnElement, delete, func
from sqlalchemy.ext.asyncio import AsyncSession

from byorouter_keystore.tables import AuthorizationCode, ManageLink, ManageSession

# Rows this long past their expiry are deleted when new ones are made; until then a reused
# code is still recognised as reused (and revokes its connection).
_KEEP_EXPIRED: Final = timedelta(hours=1)


def new_one_time_secret() -> str:
    """256 bits from `secrets`, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def expires_in(seconds: int) -> ColumnElement[datetime]:
    # The database's clock, so expiry is judged by one clock however many copies run.
    return func.now() + timedelta(seconds=seconds)


async def purge_expired(session: AsyncSession) -> None:
    """Delete codes, links and sessions that expired more than an hour ago.

    A code no one ever tried stays until its connection has been purged with it
    (`consent.purge_unexchanged` marks it used): deleting it first would leave that connection
    live with no record that it was never delivered.
    """
    cutoff = func.now() - _KEEP_EXPIRED
    await session.execute(
        delete(AuthorizationCode).where(
            AuthorizationCode.expires_at < cutoff, AuthorizationCode.used_at.is_not(None)
        )
    )
    for table in (ManageLink, ManageSession):
        await session.execute(delete(table).where(table.expires_at < cutoff))
