"""Headless connections: an app's server stores its users' keys without the Connect page.

Off by default; the operator turns it on per app (`APP_HEADLESS_SET`). Keystore refuses every
call here with 403 `headless_not_enabled` for an app that has not been allowed, so the gateway
need not know. The gateway is the only caller of the app-facing endpoints (not in `ENDPOINTS`).
"""

from __future__ import annotations

from pydantic import Field

from byorouter_common.contracts.base import Contract, Endpoint
from byorouter_common.contracts.keystore.apps import AppInfo
from byorouter_common.contracts.keystore.connections import (
    ConnectionInfo,
    ProviderCredentialInput,
)
from byorouter_common.contracts.keystore.names import SERVICE, ProviderName


class AppHeadlessSet(Contract):
    client_id: str
    enabled: bool


class HeadlessCheck(Contract):
    app_id: str


class HeadlessAllowed(Contract):
    app_id: str
    headless: bool = True


class HeadlessConnectionCreate(Contract):
    """A new connection; providers are tried in the order listed."""

    app_id: str
    providers: list[ProviderCredentialInput] = Field(min_length=1, max_length=8)
    fallback_to_default: bool = False


class HeadlessConnectionUpdate(Contract):
    """Changes to one connection, applied together (all or none); the id stays.

    In this order: `providers` are added, or replace the provider of the same kind (a new key,
    a new data key); `remove_providers` go; then `order`, `preferred_models` and
    `fallback_to_default` are set as on the manage page (an absent order keeps the current one).
    """

    app_id: str
    connection_id: str
    providers: list[ProviderCredentialInput] = Field(default_factory=list, max_length=8)
    remove_providers: list[ProviderName] = Field(default_factory=list, max_length=8)
    order: list[ProviderName] | None = Field(default=None, min_length=1, max_length=8)
    preferred_models: dict[ProviderName, str | None] = Field(default_factory=dict)
    fallback_to_default: bool | None = None


APP_HEADLESS_SET = Endpoint(
    "byorouter.keystore.app.headless.set",
    AppHeadlessSet,
    AppInfo,
    SERVICE,
    "Allow (or stop allowing) an app's server to store its users' keys without Connect.",
)
HEADLESS_CHECK = Endpoint(
    "byorouter.keystore.headless.check",
    HeadlessCheck,
    HeadlessAllowed,
    SERVICE,
    "Whether an app may handle its users' keys itself; 403 if not.",
)
HEADLESS_CONNECTION_CREATE = Endpoint(
    "byorouter.keystore.headless.connection.create",
    HeadlessConnectionCreate,
    ConnectionInfo,
    SERVICE,
    "A headless app creates a connection with its user's keys (sealed, masked as on Connect).",
)
HEADLESS_CONNECTION_UPDATE = Endpoint(
    "byorouter.keystore.headless.connection.update",
    HeadlessConnectionUpdate,
    ConnectionInfo,
    SERVICE,
    "A headless app replaces keys, adds or removes providers, or changes preferences.",
)

# What the gateway calls on behalf of apps.
GATEWAY_ENDPOINTS = (HEADLESS_CHECK, HEADLESS_CONNECTION_CREATE, HEADLESS_CONNECTION_UPDATE)
