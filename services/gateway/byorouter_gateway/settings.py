"""Gateway settings: where it listens, and how it caches, limits and logs app requests."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from byorouter_common.settings import CONNECT_PUBLIC_URL_DEFAULT, ServiceSettings

MIB = 1024 * 1024


class GatewaySettings(ServiceSettings):
    # Field names also work as keyword arguments (tests); the environment uses the aliases.
    model_config = SettingsConfigDict(
        env_prefix="BYOROUTER_", extra="ignore", populate_by_name=True
    )

    # Loopback by default: exposing the API beyond this machine is an explicit operator choice.
    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("BYOROUTER_GATEWAY_HOST"))
    port: int = Field(default=4000, validation_alias=AliasChoices("BYOROUTER_GATEWAY_PORT"))
    # BYOROUTER_METRICS_PORT: /metrics on its own listener (0: none); see docs/operations.md.
    metrics_port: int = Field(default=9401, ge=0, le=65535)
    # How long a verified app key is trusted without asking keystore; revocation events drop it
    # sooner, so this only bounds the damage of a missed event.
    auth_cache_ttl_s: float = Field(default=30.0, ge=0)
    auth_cache_size: int = Field(default=10_000, ge=1)
    # The default limits of an app (requests a second, burst) and of each of its connections,
    # counted across every gateway copy; `byorouter app limits` sets them per app, 0 turns one
    # off. The app's is far above what a copy serves (about 1,200 a second): in effect off
    # unless set. The connection's stops one user's runaway loop (decision 0021).
    rate_limit_rps: float = Field(default=10_000.0, ge=0)
    rate_limit_burst: int = Field(default=20_000, ge=0)
    connection_rate_limit_rps: float = Field(default=20.0, ge=0)
    connection_rate_limit_burst: int = Field(default=100, ge=0)
    # Requests refused for their app key allowed per minute per client IP, per gateway copy;
    # beyond that the IP gets 429 and its keys are not even looked up until the budget refills.
    auth_failures_per_ip_per_min: int = Field(default=30, ge=1)
    # The largest request body accepted (images inline as base64 are large). A body larger than
    # one bus message (1 MiB by default) crosses the bus in parts.
    max_body_bytes: int = Field(default=8 * MIB, ge=1)
    # Browser origins allowed to call the API directly; empty turns CORS off.
    cors_origins: list[str] = Field(default_factory=list)
    # /readyz waits this long for keystore and router to answer discovery pings.
    ready_timeout_s: float = Field(default=1.0, gt=0)
    # On shutdown, how long open responses (long streams) may finish before they are cut.
    shutdown_grace_s: int = Field(default=10, ge=0)
    # Where people's browsers reach Connect: manage links (POST /v1/connect/sessions) point here,
    # and apps send browsers to the same URL. BYOROUTER_CONNECT_URL (the example apps' old name)
    # still works, deprecated.
    connect_public_url: str = Field(
        default=CONNECT_PUBLIC_URL_DEFAULT,
        validation_alias=AliasChoices("BYOROUTER_CONNECT_PUBLIC_URL", "BYOROUTER_CONNECT_URL"),
    )
    # Where tunnel clients on users' machines dial in (the tunnel service's WebSocket); the
    # command POST /api/tunnel/register hands out points here. wss:// in production.
    tunnel_public_url: str = Field(
        default="ws://127.0.0.1:4001/tunnel",
        validation_alias=AliasChoices("BYOROUTER_TUNNEL_PUBLIC_URL"),
    )
    # Failed code exchanges (POST /v1/oauth/token) allowed per minute, per app and per client
    # IP, per gateway copy; beyond that every attempt is refused with 429 until the budget refills.
    oauth_failures_per_app_per_min: int = Field(default=10, ge=1)
    oauth_failures_per_ip_per_min: int = Field(default=60, ge=1)
    # Key tests (POST /v1/credentials/test, seed 002's /api/ai/test-connection) per minute per
    # app, per gateway copy.
    credential_tests_per_app_per_min: int = Field(default=30, ge=1)
    # How long a manage link from POST /v1/connect/sessions may wait to be opened.
    manage_link_ttl_s: int = Field(default=300, ge=10, le=900)
