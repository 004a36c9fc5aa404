"""Connections, their provider credentials, resolving them for the router, and their usage;
served by keystore."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import Field, SecretStr, field_serializer

from byorouter_common.contracts.base import Contract, Endpoint
from byorouter_common.contracts.keystore.names import SERVICE, ProviderName
from byorouter_common.contracts.keystore.user_limits import LimitsStatus, UserLimits

# --- connections ----------------------------------------------------------------------------


class ProviderCredentialInput(Contract):
    provider: ProviderName
    api_key: SecretStr | None = None
    base_url: str | None = Field(default=None, max_length=2048)
    preferred_model: str | None = Field(default=None, max_length=200)
    # selfhosted only: the tunnel to the user's own server (`base_url`, if set, is then the
    # direct address used while the tunnel is offline).
    tunnel_id: str | None = Field(default=None, max_length=64)

    @field_serializer("api_key", when_used="json")
    def _reveal(self, value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None


class ConnectionCreate(Contract):
    app_id: str
    providers: list[ProviderCredentialInput] = Field(min_length=1, max_length=8)
    fallback_to_default: bool = False


class ProviderInfo(Contract):
    """What an app or a person may see of a stored credential: never the key."""

    provider: ProviderName
    label: str | None
    base_url: str | None
    preferred_model: str | None
    priority: int
    status: Literal["ok", "failing"] = "ok"
    last_error: str | None = None
    updated_at: datetime
    tunnel_id: str | None = None


class ConnectionInfo(Contract):
    connection_id: str
    app_id: str
    status: Literal["active", "revoked"]
    fallback_to_default: bool
    created_at: datetime
    providers: list[ProviderInfo]
    # The limits the user set on this app, and what is left of them; None: no limits.
    limits: LimitsStatus | None = None


class ConnectionRef(Contract):
    """A connection as seen by one app: another app's connection is simply not found."""

    app_id: str
    connection_id: str


class ConnectionDeleted(Contract):
    connection_id: str
    deleted: bool = True


class ResolvedProvider(Contract):
    provider: ProviderName
    api_key: SecretStr | None
    base_url: str | None
    preferred_model: str | None
    priority: int
    # `failing` once the provider rejected this key; the router then stops using it as a fallback.
    status: Literal["ok", "failing"] = "ok"
    # selfhosted through a tunnel: its id and the client's X25519 public key (base64url), bound
    # at the client's first connect; None until then (the tunnel is offline anyway).
    tunnel_id: str | None = None
    tunnel_public_key: str | None = None

    @field_serializer("api_key", when_used="json")
    def _reveal(self, value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None


class ResolvedConnection(Contract):
    connection_id: str
    app_id: str
    fallback_to_default: bool
    providers: list[ResolvedProvider]
    # The app's own default provider when the operator set one, whatever `fallback_to_default`
    # says: it serves `default/<model>` always, and is a fallback only if the connection allows.
    app_default: ResolvedProvider | None = None
    # Providers the connection holds that the app's provider policy no longer allows: left out
    # of `providers`, named here so the router can say why it will not use them.
    blocked_providers: list[str] = Field(default_factory=list)
    # The user's limits on this app; None (most connections) costs the chat path nothing.
    limits: UserLimits | None = None


# --- usage ----------------------------------------------------------------------------------


class UsageRow(Contract):
    """A connection's requests and tokens on one provider and model on one day (UTC)."""

    day: date
    provider: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    partial_requests: int = 0


class UsageReport(Contract):
    connection_id: str
    rows: list[UsageRow]


CONNECTION_CREATE = Endpoint(
    "byorouter.keystore.connection.create",
    ConnectionCreate,
    ConnectionInfo,
    SERVICE,
    "Create a connection with encrypted provider credentials (admin path).",
)
CONNECTION_GET = Endpoint(
    "byorouter.keystore.connection.get",
    ConnectionRef,
    ConnectionInfo,
    SERVICE,
    "A connection and its providers with masked labels.",
)
CONNECTION_DELETE = Endpoint(
    "byorouter.keystore.connection.delete",
    ConnectionRef,
    ConnectionDeleted,
    SERVICE,
    "Disconnect: revoke the connection and erase its credentials.",
)
CREDENTIALS_RESOLVE = Endpoint(
    "byorouter.keystore.credentials.resolve",
    ConnectionRef,
    ResolvedConnection,
    SERVICE,
    "Decrypted provider credentials of a connection. Router only.",
)
USAGE_GET = Endpoint(
    "byorouter.keystore.usage.get",
    ConnectionRef,
    UsageReport,
    SERVICE,
    "A connection's token usage per provider, model and day (UTC), newest day first.",
)
