"""Keystore settings: where PostgreSQL is and where the key-encryption keys come from."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr

from byorouter_common.settings import ServiceSettings


class KeystoreSettings(ServiceSettings):
    # An SQLAlchemy URL for psycopg 3, e.g. postgresql+psycopg://user:pw@host/db or, for a unix
    # socket, postgresql+psycopg://postgres@/postgres?host=/run/postgresql.
    database_url: str = Field(
        default="postgresql+psycopg://postgres@127.0.0.1:5432/byorouter",
        validation_alias=AliasChoices("DATABASE_URL", "BYOROUTER_DATABASE_URL"),
    )
    # BYOROUTER_KEYRING_FILE: the keyring JSON file (mode 0600); rotation rewrites it.
    keyring_file: Path = Path(".byorouter/keyring.json")
    # BYOROUTER_KEYRING: the same JSON inline, for containers; such a keyring cannot be rotated.
    keyring: SecretStr | None = None
    # Credentials re-wrapped per transaction during a key rotation; small keeps row locks short.
    rewrap_batch_size: int = Field(default=100, ge=1, le=10_000)
    # BYOROUTER_CODE_PURGE_INTERVAL_S: how often connections whose authorization code expired
    # without its app ever exchanging it are revoked and their keys erased.
    code_purge_interval_s: float = Field(default=30.0, gt=0)
