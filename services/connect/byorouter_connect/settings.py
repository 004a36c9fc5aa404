"""Connect's settings: where its HTTP server listens, how long its one-time things live, and
where tunnel clients dial in."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from byorouter_common.contracts.keystore.connect_flow import MAX_CODE_TTL_S
from byorouter_common.settings import ServiceSettings


class ConnectSettings(ServiceSettings):
    # Loopback by default: exposing the UI beyond this machine is an explicit operator choice.
    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("BYOROUTER_CONNECT_HOST"))
    port: int = Field(default=8080, validation_alias=AliasChoices("BYOROUTER_CONNECT_PORT"))
    # BYOROUTER_METRICS_PORT: /metrics on its own listener (0: none); see docs/operations.md.
    metrics_port: int = Field(default=9404, ge=0, le=65535)
    # BYOROUTER_CODE_TTL_S: how long an authorization code may wait for the app's exchange
    # (at most 10 minutes, RFC 9700; the app's server normally exchanges it within a second).
    code_ttl_s: int = Field(default=300, ge=10, le=MAX_CODE_TTL_S)
    # BYOROUTER_MANAGE_SESSION_TTL_S: how long a browser may manage a connection after opening
    # the app's manage link.
    manage_session_ttl_s: int = Field(default=1800, ge=60, le=12 * 3600)
    # How long a "Test" waits for the router (which itself gives up on a provider after 10 s).
    provider_test_timeout_s: float = Field(default=15.0, gt=0)
    # Test presses allowed per minute per client IP and per app, per Connect copy; beyond that
    # a Test is refused with 429 until the budget refills (the router is not asked).
    provider_tests_per_ip_per_min: int = Field(default=10, ge=1)
    provider_tests_per_app_per_min: int = Field(default=60, ge=1)
    # Cookies are Secure unless the page is served to a loopback host over plain http; set
    # BYOROUTER_COOKIE_SECURE=true to force them Secure everywhere.
    cookie_secure: bool = False
    # BYOROUTER_TUNNEL_PUBLIC_URL: where a person's `byorouter-tunnel` dials in (the tunnel
    # service's WebSocket, wss:// in production), shown in the command the tunnel pages give.
    tunnel_public_url: str = "ws://127.0.0.1:4001/tunnel"
    # BYOROUTER_CONNECT_GUIDE_URL: where the Connect guide (docs/connect.md) is published; when
    # set, an authorization request refused for missing PKCE links to it as `error_uri`.
    connect_guide_url: str = ""
