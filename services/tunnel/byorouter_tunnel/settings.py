"""Tunnel's settings: the common service settings plus where its HTTP/WebSocket server listens."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from byorouter_common.settings import ServiceSettings


class TunnelSettings(ServiceSettings):
    # Loopback by default: exposing the tunnel endpoint is an explicit operator choice.
    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("BYOROUTER_TUNNEL_HOST"))
    port: int = Field(default=4001, validation_alias=AliasChoices("BYOROUTER_TUNNEL_PORT"))
