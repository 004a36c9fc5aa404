"""Apps, their API keys and their own default provider; served by keystore."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, SecretStr, field_serializer

from byorouter_common.contracts.base import Contract, Endpoint
from byorouter_common.contracts.keystore.names import SERVICE, ProviderName


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
    # Its server may store its users' keys itself (`headless.APP_HEADLESS_SET`).
    headless: bool = False


class AppAuthenticate(Contract):
    """The gateway sends the key's public id and SHA-256, never the key itself."""

    key_id: str
    key_hash: str = Field(pattern=r"^[0-9a-f]{64}$")


class AppRateLimits(Contract):
    """Requests a second and burst for the app as a whole and for each of its connections,
    shared by every gateway copy. None: the gateway's default; 0: no limit."""

    rps: float | None = Field(default=None, ge=0)
    burst: int | None = Field(default=None, ge=0)
    connection_rps: float | None = Field(default=None, ge=0)
    connection_burst: int | None = Field(default=None, ge=0)


class AppPrincipal(Contract):
    app_id: str
    client_id: str
    name: str
    key_id: str
    limits: AppRateLimits = AppRateLimits()


class AppLimitsSet(Contract):
    """Change the limits given (the others stay); none given only reads them."""

    # The app's id (app_...) or its client id (cli_...).
    app: str = Field(min_length=1, max_length=200)
    limits: AppRateLimits = AppRateLimits()
    # Every limit back to the gateway's default (then `limits` is applied on top).
    reset: bool = False


class AppLimits(Contract):
    app_id: str
    client_id: str
    limits: AppRateLimits


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
APP_LIMITS_SET = Endpoint(
    "byorouter.keystore.app.limits.set",
    AppLimitsSet,
    AppLimits,
    SERVICE,
    "Set (or read) an app's rate limits; every gateway copy applies them at once.",
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
