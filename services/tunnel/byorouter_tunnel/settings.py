"""Tunnel's settings: where the clients' WebSocket listens, heartbeats, limits and drain."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field

from byorouter_common.settings import ServiceSettings


class TunnelSettings(ServiceSettings):
    # Loopback by default: exposing the tunnel endpoint is an explicit operator choice.
    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("BYOROUTER_TUNNEL_HOST"))
    port: int = Field(default=4001, validation_alias=AliasChoices("BYOROUTER_TUNNEL_PORT"))
    # BYOROUTER_METRICS_PORT: /metrics on its own listener (0: none); see docs/operations.md.
    metrics_port: int = Field(default=9405, ge=0, le=65535)
    # The service pings every client this often; a client silent for 2.5 intervals is dead and
    # every request in flight on it fails at once.
    heartbeat_s: float = 10.0
    # A client must say who it is this soon after the socket opens.
    hello_timeout_s: float = 10.0
    # Requests in flight per client socket; more get 429 with Retry-After.
    max_concurrency: int = 64
    # Frames queued for one client; a full queue slows only that client's streams.
    send_queue_frames: int = 256
    # On SIGTERM: clients are told to reconnect elsewhere, and streams in flight get this long.
    drain_grace_s: float = 30.0
    # Keep-alives to the router while a client's model is silent.
    keepalive_interval_s: float = 5.0
    # The client wheels served at /client (default: where `make install` builds them).
    client_dist_dir: Path | None = None
