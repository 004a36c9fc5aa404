"""Fan-out events keystore publishes on change, so every cache in every copy drops stale entries."""

from __future__ import annotations

from byorouter_common.contracts.base import Contract, Event


class AppKeyRevokedEvent(Contract):
    key_id: str
    app_id: str


class ConnectionChangedEvent(Contract):
    connection_id: str
    app_id: str
    deleted: bool = False


class KeyringRotatedEvent(Contract):
    active_version: int


APP_KEY_REVOKED = Event(
    "byorouter.events.app_key.revoked", AppKeyRevokedEvent, "An app API key was revoked."
)
CONNECTION_CHANGED = Event(
    "byorouter.events.connection.changed",
    ConnectionChangedEvent,
    "A connection's credentials or settings changed, or it was deleted.",
)
KEYRING_ROTATED = Event(
    "byorouter.events.keystore.keyring_rotated",
    KeyringRotatedEvent,
    "A new key-encryption key is active; keystore copies reload their keyring.",
)
