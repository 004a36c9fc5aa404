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
)
