"""Settings shared by every service; each service extends `ServiceSettings` with its own fields.

Connection URLs use the conventional unprefixed names (`NATS_URL`, `DATABASE_URL`); everything
else is `BYOROUTER_<FIELD>`.
"""

from __future__ import annotations

import ipaddress

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Where people's browsers reach Connect unless BYOROUTER_CONNECT_PUBLIC_URL says otherwise: the
# one default for the gateway's manage links, the dev stack and the example apps.
CONNECT_PUBLIC_URL_DEFAULT = "http://127.0.0.1:8080"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BYOROUTER_", extra="ignore")

    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        validation_alias=AliasChoices("NATS_URL", "BYOROUTER_NATS_URL"),
    )
    nats_user: str | None = None
    nats_password: str | None = None
    log_level: str = "INFO"
    log_format: str = "json"  # json | text
    # How long a caller waits for a plain request/reply on the bus before answering 504.
    bus_timeout_s: float = 5.0
    # A stream with no message (not even a keep-alive) for this long is treated as failed.
    # Three of the senders' 5 s keep-alives: a copy killed mid-stream is noticed after 15 s.
    stream_idle_timeout_s: float = 15.0
    # OpenTelemetry exporter: none | console (OTLP can be added by the operator's own config).
    otel_exporter: str = "none"
    # BYOROUTER_TRUSTED_PROXIES: comma-separated IPs or CIDRs of the reverse proxies in front of
    # the HTTP services. Only a peer listed here may say who the client is (X-Forwarded-For,
    # X-Forwarded-Proto); empty trusts nobody, loopback included, so the client IP that rate
    # limits count by is the socket's peer.
    trusted_proxies: str = ""

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, value: str) -> str:
        for entry in _entries(value):
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or CIDR: {entry!r}") from None
        return value

    @property
    def trusted_proxy_list(self) -> list[str]:
        return _entries(self.trusted_proxies)


def _entries(value: str) -> list[str]:
    return [entry.strip() for entry in value.split(",") if entry.strip()]
