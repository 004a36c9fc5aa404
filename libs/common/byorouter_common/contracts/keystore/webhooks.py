"""An app's webhooks: where keystore posts its events, signed per the Standard Webhooks spec."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, SecretStr, field_serializer

from byorouter_common.contracts.base import Contract, Endpoint
from byorouter_common.contracts.keystore.names import SERVICE

WebhookEventType = Literal[
    "connection.disconnected",
    "connection.updated",
    "credential.failing",
    "credential.recovered",
    "tunnel.online",
    "tunnel.offline",
]
WEBHOOK_EVENT_TYPES: tuple[WebhookEventType, ...] = (
    "connection.disconnected",
    "connection.updated",
    "credential.failing",
    "credential.recovered",
    "tunnel.online",
    "tunnel.offline",
)


class WebhookAdd(Contract):
    client_id: str
    url: str = Field(min_length=1, max_length=2000)


class WebhookCreated(Contract):
    webhook_id: str
    app_id: str
    url: str
    # Shown once (whsec_...): the app verifies signatures with it; keystore keeps it sealed.
    secret: SecretStr

    @field_serializer("secret", when_used="json")
    def _reveal(self, value: SecretStr) -> str:
        return value.get_secret_value()


class WebhookListRequest(Contract):
    client_id: str


class WebhookInfo(Contract):
    webhook_id: str
    url: str
    created_at: datetime
    pending: int = 0
    failed: int = 0
    last_delivered_at: datetime | None = None


class WebhookList(Contract):
    app_id: str
    webhooks: list[WebhookInfo]


class WebhookRemove(Contract):
    webhook_id: str


class WebhookRemoved(Contract):
    webhook_id: str


WEBHOOK_ADD = Endpoint(
    "byorouter.keystore.webhook.add",
    WebhookAdd,
    WebhookCreated,
    SERVICE,
    "Register a URL that receives the app's events; returns its signing secret (shown once).",
)
WEBHOOK_LIST = Endpoint(
    "byorouter.keystore.webhook.list",
    WebhookListRequest,
    WebhookList,
    SERVICE,
    "An app's webhooks with their pending and failed deliveries.",
)
WEBHOOK_REMOVE = Endpoint(
    "byorouter.keystore.webhook.remove",
    WebhookRemove,
    WebhookRemoved,
    SERVICE,
    "Remove a webhook; its undelivered events are dropped with it.",
)
