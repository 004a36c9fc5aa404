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

    # One URL, or a comma-separated list of a cluster's nodes: the client connects to one and
    # moves to another when it dies.
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
    # Where spans go: none | console | otlp. With none the standard OTEL_TRACES_EXPORTER and
    # OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT decide (`telemetry.chosen_exporters`).
    otel_exporter: str = "none"
    # BYOROUTER_TRUSTED_PROXIES: comma-separated IPs or CIDRs of the reverse proxies in front of
    # the HTTP services. Only a peer listed here may say who the client is (X-Forwarded-For,
    # X-Forwarded-Proto); empty trusts nobody, loopback included, so the client IP that rate
    # limits count by is the socket's peer.
    trusted_proxies: str = ""
    # Prometheus exposition at http://<metrics_host>:<metrics_port>/metrics, on a listener of
    # its own (never the public API port); 0 serves none. Each service sets its own default
    # port (gateway 9401, router 9402, keystore 9403, connect 9404, tunnel 9405).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # BYOROUTER_ACCESS_LOG: one INFO line per request on logger `byorouter.access` (gateway,
    # connect and tunnel per HTTP request, router per request, every service per bus request
    # it answers); false turns them off. About 50 µs of CPU a line under load.
    access_log: bool = True
    # Copies of one HTTP service on one host share its port: each opens the listening socket
    # with SO_REUSEPORT and the kernel spreads new connections over them (decision 0024).
    reuse_port: bool = False
    # After SIGTERM an HTTP service answers /readyz with 503 for this long while it still
    # serves, so a load balancer stops sending it requests before its listener closes.
    drain_delay_s: float = Field(default=0.0, ge=0)
    # Copies JetStream keeps of each stream and KV bucket the services create: 3 on a
    # three-node cluster, so losing a node loses nothing; 1 on a single server.
    jetstream_replicas: int = Field(default=1, ge=1, le=5)

    @property
    def nats_servers(self) -> list[str]:
        """Every NATS URL in `nats_url` (a cluster's nodes are comma-separated)."""
        return _entries(self.nats_url)

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
