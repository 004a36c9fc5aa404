"""Connect's settings: the common service settings plus where its HTTP server listens."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from byorouter_common.settings import ServiceSettings


class ConnectSettings(ServiceSettings):
    # Loopback by default: exposing the UI beyond this machine is an explicit operator choice.
    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("BYOROUTER_CONNECT_HOST"))
    port: int = Field(default=8080, validation_alias=AliasChoices("BYOROUTER_CONNECT_PORT"))
