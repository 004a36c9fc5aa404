"""The async engine, the session factory, and running the Alembic migrations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

# Alembic (with Mako and Pygments) is imported only by `migrate`: a serving keystore never needs
# it, and loading it costs 11 MiB resident per copy (measured).
if TYPE_CHECKING:
    from alembic.config import Config

_ALEMBIC_INI = Path(__file__).with_name("alembic.ini")


def create_engine(database_url: str, *, pool_size: int = 10, max_overflow: int = 10) -> AsyncEngine:
    # hide_parameters: SQL errors and logs must never carry bound values (ciphertexts, hashes).
    return create_async_engine(
        database_url,
        hide_parameters=True,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def safe_url(database_url: str) -> str:
    """The URL with any password hidden, for log lines and error messages."""
    return make_url(database_url).render_as_string(hide_password=True)


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config

    config = Config(str(_ALEMBIC_INI))
    # Passed as an attribute, not an ini option: ConfigParser would choke on '%' in passwords.
    config.attributes["database_url"] = database_url
    return config


def upgrade_database(database_url: str) -> None:
    """`alembic upgrade head` against `database_url`; synchronous, so call it outside a loop."""
    from alembic import command

    command.upgrade(alembic_config(database_url), "head")
