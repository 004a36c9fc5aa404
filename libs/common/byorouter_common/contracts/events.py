"""Events on the bus: keystore's change notices, which every cache in every copy hears, and the
router's reports (usage, a rejected key), which keystore records once (queue group `keystore`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from byorouter_common.contracts.base import Contract, Event


class AppKeyRevokedEvent(Contract):
    key_id: str
    app_id: str


class ConnectionChangedEvent(Contract):
    connection_id: str
    app_id: str
    deleted: bool = False


class AppDefaultChangedEvent(Contract):
    """An app's default provider was set, replaced or cleared: every connection of it changed."""

    app_id: str


class TunnelChangedEvent(Contract):
    """A tunnel was revoked or its token rotated: tunnel copies close revoked sockets at once."""

    tunnel_id: str
    connection_id: str
    app_id: str
    revoked: bool = False


class KeyringRotatedEvent(Contract):
    active_version: int


class UsageEvent(Contract):
    """The tokens one finished request used, as its provider reported them (0 when it did not)."""

    request_id: str
    app_id: str
    connection_id: str
    provider: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    at: datetime


class CredentialStatusEvent(Contract):
    """A provider rejected a connection's key (`failing`), or accepted it again (`ok`).

    `last_error` is a short message safe to show the app: it never holds the key.
    """

    connection_id: str
    app_id: str
    provider: str
    status: Literal["ok", "failing"]
    last_error: str | None = None


APP_KEY_REVOKED = Event(
    "byorouter.events.app_key.revoked", AppKeyRevokedEvent, "An app API key was revoked."
)
CONNECTION_CHANGED = Event(
    "byorouter.events.connection.changed",
    ConnectionChangedEvent,
    "A connection's credentials or settings changed, or it was deleted.",
)
APP_DEFAULT_CHANGED = Event(
    "byorouter.events.app_default.changed",
    AppDefaultChangedEvent,
    "An app's default provider was set or cleared; routers drop that app's cached connections.",
)
TUNNEL_CHANGED = Event(
    "byorouter.events.tunnel.changed",
    TunnelChangedEvent,
    "A tunnel was revoked or rotated; tunnel copies close a revoked tunnel's sockets at once.",
)
KEYRING_ROTATED = Event(
    "byorouter.events.keystore.keyring_rotated",
    KeyringRotatedEvent,
    "A new key-encryption key is active; keystore copies reload their keyring.",
)
USAGE = Event(
    "byorouter.events.usage.recorded",
    UsageEvent,
    "A chat request finished; its token usage, for keystore to add to the connection's totals.",
)
CREDENTIAL_STATUS = Event(
    "byorouter.events.credential.status",
    CredentialStatusEvent,
    "A provider rejected (or accepted again) a connection's key; keystore records the status.",
)
