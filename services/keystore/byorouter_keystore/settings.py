"""Keystore settings: where PostgreSQL is and where the key-encryption keys come from."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, model_validator

from byorouter_common.settings import ServiceSettings


class KeystoreSettings(ServiceSettings):
    # BYOROUTER_METRICS_PORT: /metrics on its own listener (0: none); see docs/operations.md.
    metrics_port: int = Field(default=9403, ge=0, le=65535)
    # An SQLAlchemy URL for psycopg 3, e.g. postgresql+psycopg://user:pw@host/db or, for a unix
    # socket, postgresql+psycopg://postgres@/postgres?host=/run/postgresql.
    database_url: str = Field(
        default="postgresql+psycopg://postgres@127.0.0.1:5432/byorouter",
        validation_alias=AliasChoices("DATABASE_URL", "BYOROUTER_DATABASE_URL"),
    )
    # BYOROUTER_DB_POOL_SIZE / BYOROUTER_DB_MAX_OVERFLOW: database connections each copy keeps
    # open once used, and how many more it may open under load; copies x (pool + overflow) must
    # stay under the server's max_connections (docs/scaling.md).
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int = Field(default=10, ge=0, le=200)
    # BYOROUTER_KEYRING_FILE: the keyring JSON file (mode 0600); rotation rewrites it.
    keyring_file: Path = Path(".byorouter/keyring.json")
    # BYOROUTER_KEYRING: the same JSON inline, for containers; such a keyring cannot be rotated.
    keyring: SecretStr | None = None
    # Credentials re-wrapped per transaction during a key rotation; small keeps row locks short.
    rewrap_batch_size: int = Field(default=100, ge=1, le=10_000)
    # Every copy confirms in the database the KEK version it seals with this often, and at once
    # on a rotation event; prune removes a KEK only when every live copy confirmed the newest.
    kek_heartbeat_s: float = Field(default=10.0, gt=0, le=300)
    # A copy unconfirmed for this long counts as gone: prune no longer waits for it, and the
    # copy itself seals nothing until it has confirmed again. Several heartbeats, so one slow
    # database write does not stop a copy.
    kek_lease_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _lease_spans_heartbeats(self) -> KeystoreSettings:
        if self.kek_lease_s < 3 * self.kek_heartbeat_s:
            raise ValueError("BYOROUTER_KEK_LEASE_S must be at least 3 x BYOROUTER_KEK_HEARTBEAT_S")
        return self

    # BYOROUTER_CODE_PURGE_INTERVAL_S: how often connections whose authorization code expired
    # without its app ever exchanging it are revoked and their keys erased.
    code_purge_interval_s: float = Field(default=30.0, gt=0)

    # BYOROUTER_HOUSEKEEPING_INTERVAL_S: how often rows that have done their job (usage
    # request ids past redelivery, old daily counters, finished webhook deliveries) are deleted.
    housekeeping_interval_s: float = Field(default=3600.0, gt=0)

    # BYOROUTER_USAGE_FLUSH_INTERVAL_S / BYOROUTER_USAGE_FLUSH_EVENTS: usage reports are written
    # this long after the first of a batch arrived, at most this many per transaction (decision
    # 0025): usage shows within about the interval, and a busy connection's daily row is written
    # once per batch instead of once per request.
    usage_flush_interval_s: float = Field(default=1.0, gt=0, le=60)
    usage_flush_events: int = Field(default=500, ge=1, le=10_000)
    # BYOROUTER_USAGE_ACK_WAIT_S: a report fetched but not acknowledged this long (its copy died
    # before the commit) goes to another copy. Set the same on every copy: each puts its own
    # back on the shared consumer when it starts.
    usage_ack_wait_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _ack_wait_spans_flushes(self) -> KeystoreSettings:
        if self.usage_ack_wait_s < 2 * self.usage_flush_interval_s:
            raise ValueError(
                "BYOROUTER_USAGE_ACK_WAIT_S must be at least 2 x BYOROUTER_USAGE_FLUSH_INTERVAL_S"
            )
        return self

    # BYOROUTER_ALLOW_PRIVATE_UPSTREAMS: let webhook URLs reach loopback/private/link-local
    # addresses, as the router lets base URLs. Off in production (SSRF); on for tests.
    allow_private_upstreams: bool = False
    # Seconds to wait before each retry of a webhook delivery (each +-20% jitter); after the
    # last one fails the delivery is marked failed. JSON in the environment: [5, 30, ...].
    webhook_retry_schedule_s: tuple[float, ...] = (
        5,
        30,
        120,
        600,
        3600,
        3 * 3600,
        6 * 3600,
        12 * 3600,
        24 * 3600,
    )
    # One attempt's whole budget: a receiver that hangs costs a sender slot this long, no more.
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=60)
    # Deliveries in flight per keystore copy.
    webhook_concurrency: int = Field(default=16, ge=1, le=256)
    # How often each copy looks for due deliveries.
    webhook_poll_interval_s: float = Field(default=1.0, gt=0, le=60)
