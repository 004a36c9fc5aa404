"""Keystore's subjects: apps, app keys, connections, credentials and key-encryption keys."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import Field, SecretStr, field_serializer

from byorouter_common.contracts.base import Contract, Empty, Endpoint

ProviderName = Literal["openai", "anthropic", "openrouter", "selfhosted"]
PROVIDERS: tuple[ProviderName, ...] = ("openai", "anthropic", "openrouter", "selfhosted")


# --- apps -----------------------------------------------------------------------------------


class AppCreate(Contract):
    name: str = Field(min_length=1, max_length=200)
    redirect_uris: list[str] = Field(default_factory=list, max_length=20)


class AppCreated(Contract):
    app_id: str
    client_id: str
    name: str
    redirect_uris: list[str]
    key_id: str
    key_label: str
    # Shown once; only its hash is stored.
    app_api_key: SecretStr

    @field_serializer("app_api_key", when_used="json")
    def _reveal(self, value: SecretStr) -> str:
        return value.get_secret_value()


class AppGet(Contract):
    client_id: str


class AppInfo(Contract):
    app_id: str
    client_id: str
    name: str
    redirect_uris: list[str]
    created_at: datetime
    # The app's own default provider, if the operator set one: which, and its masked key.
    has_default_provider: bool = False
    default_provider: ProviderName | None = None
    default_provider_label: str | None = None


class AppAuthenticate(Contract):
    """The gateway sends the key's public id and SHA-256, never the key itself."""

    key_id: str
    key_hash: str = Field(pattern=r"^[0-9a-f]{64}$")


class AppPrincipal(Contract):
    app_id: str
    client_id: str
    name: str
    key_id: str


class AppKeyCreate(Contract):
    client_id: str


class AppKeyCreated(Contract):
    client_id: str
    key_id: str
    key_label: str
    app_api_key: SecretStr

    @field_serializer("app_api_key", when_used="json")
    def _reveal(self, value: SecretStr) -> str:
        return value.get_secret_value()


class AppKeyRevoke(Contract):
    key_id: str


class AppKeyRevoked(Contract):
    key_id: str
    app_id: str


class AppDefaultSet(Contract):
    """The app's own provider: serves `default/<model>` and is the last fallback of connections
    that allow it. Replaces any default the app had."""

    client_id: str
    provider: ProviderName
    api_key: SecretStr | None = None
    base_url: str | None = Field(default=None, max_length=2048)
    # The model `default` (with no model) asks for, and the one a fallback to the default uses.
    model: str | None = Field(default=None, max_length=200)

    @field_serializer("api_key", when_used="json")
    def _reveal(self, value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None


class AppDefaultInfo(Contract):
    """What anyone may see of an app's default provider: never the key."""

    client_id: str
    provider: ProviderName
    label: str | None
    base_url: str | None
    model: str | None
    updated_at: datetime


class AppDefaultClear(Contract):
    client_id: str


class AppDefaultCleared(Contract):
    client_id: str
    # False when the app had no default: clearing is idempotent.
    cleared: bool


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


class UsageReport(Contract):
    connection_id: str
    rows: list[UsageRow]


# --- tunnels --------------------------------------------------------------------------------


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


# --- key-encryption keys --------------------------------------------------------------------


class KeysRotated(Contract):
    active_version: int
    rewrapped: int
    # Apps' default provider keys, counted apart from connections' credentials.
    app_defaults_rewrapped: int = 0


class KeysPruned(Contract):
    active_version: int
    removed_versions: list[int]


class KeysStatus(Contract):
    active_version: int
    versions: list[int]
    credentials_by_version: dict[str, int]
    app_defaults_by_version: dict[str, int] = Field(default_factory=dict)


SERVICE = "keystore"

APP_CREATE = Endpoint(
    "byorouter.keystore.app.create",
    AppCreate,
    AppCreated,
    SERVICE,
    "Register an app; returns its client id and a first API key (shown once).",
)
APP_GET = Endpoint(
    "byorouter.keystore.app.get", AppGet, AppInfo, SERVICE, "Look up an app by client id."
)
APP_AUTHENTICATE = Endpoint(
    "byorouter.keystore.app.authenticate",
    AppAuthenticate,
    AppPrincipal,
    SERVICE,
    "Check an app API key by id and SHA-256; 401 if unknown or revoked.",
)
APP_KEY_CREATE = Endpoint(
    "byorouter.keystore.app_key.create",
    AppKeyCreate,
    AppKeyCreated,
    SERVICE,
    "Issue another API key for an app (shown once).",
)
APP_KEY_REVOKE = Endpoint(
    "byorouter.keystore.app_key.revoke",
    AppKeyRevoke,
    AppKeyRevoked,
    SERVICE,
    "Revoke an app API key; every gateway copy drops it at once.",
)
APP_DEFAULT_SET = Endpoint(
    "byorouter.keystore.app_default.set",
    AppDefaultSet,
    AppDefaultInfo,
    SERVICE,
    "Set an app's own default provider (key encrypted at rest); replaces the previous one.",
)
APP_DEFAULT_CLEAR = Endpoint(
    "byorouter.keystore.app_default.clear",
    AppDefaultClear,
    AppDefaultCleared,
    SERVICE,
    "Remove an app's default provider and erase its key.",
)
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
KEYS_ROTATE = Endpoint(
    "byorouter.keystore.keys.rotate",
    Empty,
    KeysRotated,
    SERVICE,
    "Add a new key-encryption key and re-wrap every data key with it.",
)
KEYS_PRUNE = Endpoint(
    "byorouter.keystore.keys.prune",
    Empty,
    KeysPruned,
    SERVICE,
    "Remove key-encryption keys that no stored credential uses any more.",
)
KEYS_STATUS = Endpoint(
    "byorouter.keystore.keys.status",
    Empty,
    KeysStatus,
    SERVICE,
    "Key-encryption key versions and how many credentials each wraps.",
)

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

ENDPOINTS = (
    APP_CREATE,
    APP_GET,
    APP_AUTHENTICATE,
    APP_KEY_CREATE,
    APP_KEY_REVOKE,
    APP_DEFAULT_SET,
    APP_DEFAULT_CLEAR,
    CONNECTION_CREATE,
    CONNECTION_GET,
    CONNECTION_DELETE,
    CREDENTIALS_RESOLVE,
    USAGE_GET,
    KEYS_ROTATE,
    KEYS_PRUNE,
    KEYS_STATUS,
    TUNNEL_REGISTER,
    TUNNEL_GET,
    TUNNEL_ROTATE,
    TUNNEL_REVOKE,
    TUNNEL_AUTHENTICATE,
    TUNNEL_SESSION_REFRESH,
    TUNNEL_PRESENCE,
)
