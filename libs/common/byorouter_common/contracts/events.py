"""Events on the bus: keystore's change notices, which every cache in every copy hears, and the
router's reports (usage, a rejected key), which keystore records once (queue group `keystore`).

Usage goes through a JetStream stream (`USAGE_STREAM`) rather than core NATS: it is kept until
keystore has committed it, so a keystore that is down or restarting loses none.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from byorouter_common.contracts.base import Contract, DurableConsumer, DurableStream, Event


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


class AppPolicyChangedEvent(Contract):
    """An app's provider policy changed: every connection of it may have lost providers."""

    app_id: str


class AppLimitsChangedEvent(Contract):
    """An app's rate limits changed: gateway copies drop its cached keys and ask again."""

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
    """The tokens one finished request used, as its provider reported them (0 when it did not).

    `request_id` is unique per request: keystore records each once however often it arrives.
    `cached_tokens` and `cache_write_tokens` are prompt tokens read from and written to the
    provider's prompt cache, `reasoning_tokens` completion tokens spent thinking; all are part
    of the prompt and completion counts. `partial`: the answer broke after it started (the
    upstream cut it, the client went away); `estimated`: the provider sent no usage, so the
    completion count is the router's estimate of what was delivered.
    """

    request_id: str
    app_id: str
    connection_id: str
    provider: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    partial: bool = False
    estimated: bool = False
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
APP_POLICY_CHANGED = Event(
    "byorouter.events.app_policy.changed",
    AppPolicyChangedEvent,
    "An app's provider policy changed; routers drop that app's cached connections.",
)
APP_LIMITS_CHANGED = Event(
    "byorouter.events.app_limits.changed",
    AppLimitsChangedEvent,
    "An app's rate limits changed; gateways apply them to its next request.",
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

# Kept for a week so an outage of keystore that long still loses nothing; removed as soon as
# keystore acknowledges (work-queue retention). Decision 0010.
USAGE_STREAM = DurableStream(
    "BYOROUTER_USAGE",
    (USAGE,),
    max_age_s=7 * 24 * 3600,
    max_bytes=1024**3,
    duplicate_window_s=10 * 60,
)
# Every keystore copy pulls from this one consumer, so each report is recorded by one of them.
USAGE_RECORDER = DurableConsumer(USAGE_STREAM, "keystore-usage", "keystore")
