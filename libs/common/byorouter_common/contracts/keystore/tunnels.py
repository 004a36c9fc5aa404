"""Tunnels to a person's own model server: register, show, rotate, revoke, and the tunnel
service's client checks and presence reports; served by keystore."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, SecretStr, field_serializer

from byorouter_common.contracts.base import Contract, Empty, Endpoint
from byorouter_common.contracts.keystore.names import SERVICE


class DeclaredModel(Contract):
    """A model the app says the user's server has (seed 002's `modelInfo`); the client's live
    report at connect time is what routing uses."""

    name: str = Field(min_length=1, max_length=200)
    capabilities: list[str] = Field(default_factory=list, max_length=32)


class TunnelRegister(Contract):
    """A new tunnel for a connection's self-hosted provider (created if it has none)."""

    app_id: str
    connection_id: str
    name: str | None = Field(default=None, max_length=200)
    models: list[DeclaredModel] = Field(default_factory=list, max_length=100)


class TunnelToken(Contract):
    """A tunnel's long-lived token, shown once (register, rotate); only its hash is stored."""

    tunnel_id: str
    connection_id: str
    token: SecretStr
    # After a rotation: until when the previous token still opens new sockets.
    previous_valid_until: datetime | None = None

    @field_serializer("token", when_used="json")
    def _reveal(self, value: SecretStr) -> str:
        return value.get_secret_value()


class TunnelRef(Contract):
    """A tunnel as seen by one app: another app's tunnel is simply not found."""

    app_id: str
    tunnel_id: str


class TunnelRotate(Contract):
    app_id: str
    tunnel_id: str
    # How long the old token keeps opening new sockets; sockets already up are never cut.
    overlap_s: int = Field(default=300, ge=0, le=7 * 24 * 3600)


class TunnelInfo(Contract):
    """What the app and the user may see of a tunnel: never a token."""

    tunnel_id: str
    connection_id: str
    app_id: str
    name: str | None
    status: Literal["active", "revoked"]
    declared_models: list[DeclaredModel]
    # As the client last reported them, and when a client was last connected.
    models: list[str]
    last_seen_at: datetime | None
    client_version: str | None
    public_key_fingerprint: str | None
    created_at: datetime
    rotated_at: datetime | None
    previous_valid_until: datetime | None


class TunnelRevoked(Contract):
    tunnel_id: str
    revoked: bool = True


class TunnelAuthenticate(Contract):
    """A tunnel client's first frame, as the tunnel service forwards it: a long-lived token or a
    session token (never both), and the client's public key."""

    token: SecretStr | None = None
    session: SecretStr | None = None
    public_key: str = Field(min_length=43, max_length=44)

    @field_serializer("token", "session", when_used="json")
    def _reveal(self, value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None


class TunnelSessionRefresh(Contract):
    """The tunnel service asks for a fresh session for a client whose socket it holds (only the
    tunnel service may call this: the socket already proved who the client is)."""

    tunnel_id: str


class TunnelSession(Contract):
    """An authenticated tunnel client: whose it is and a fresh short-lived session token."""

    tunnel_id: str
    connection_id: str
    app_id: str
    session: SecretStr
    session_ttl_s: int

    @field_serializer("session", when_used="json")
    def _reveal(self, value: SecretStr) -> str:
        return value.get_secret_value()


class TunnelPresence(Contract):
    """A tunnel service copy reports a client connected (with its live models) or gone."""

    tunnel_id: str
    online: bool
    models: list[str] = Field(default_factory=list, max_length=1000)
    client_version: str | None = Field(default=None, max_length=64)


TUNNEL_REGISTER = Endpoint(
    "byorouter.keystore.tunnel.register",
    TunnelRegister,
    TunnelToken,
    SERVICE,
    "A tunnel for a connection's self-hosted provider; returns its token (shown once).",
)
TUNNEL_GET = Endpoint(
    "byorouter.keystore.tunnel.get",
    TunnelRef,
    TunnelInfo,
    SERVICE,
    "A tunnel's record (never its token), for the app that owns it.",
)
TUNNEL_ROTATE = Endpoint(
    "byorouter.keystore.tunnel.rotate",
    TunnelRotate,
    TunnelToken,
    SERVICE,
    "A new token; the old one opens new sockets only during the overlap.",
)
TUNNEL_REVOKE = Endpoint(
    "byorouter.keystore.tunnel.revoke",
    TunnelRef,
    TunnelRevoked,
    SERVICE,
    "Revoke a tunnel now: every token and session refused, every socket closed.",
)
TUNNEL_AUTHENTICATE = Endpoint(
    "byorouter.keystore.tunnel.authenticate",
    TunnelAuthenticate,
    TunnelSession,
    SERVICE,
    "Check a tunnel client's token or session; binds its public key at first connect.",
)
TUNNEL_SESSION_REFRESH = Endpoint(
    "byorouter.keystore.tunnel.session.refresh",
    TunnelSessionRefresh,
    TunnelSession,
    SERVICE,
    "A fresh session token for a client whose socket is up.",
)
TUNNEL_PRESENCE = Endpoint(
    "byorouter.keystore.tunnel.presence",
    TunnelPresence,
    Empty,
    SERVICE,
    "Record a tunnel client connecting (with its models) or going away.",
)
