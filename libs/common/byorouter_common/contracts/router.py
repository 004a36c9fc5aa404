"""Router's subjects: the streamed chat call, the model list, and cancellation.

`byorouter.router.chat` answers with the streaming protocol (see `byorouter_common.bus`), not a
single reply. Its request embeds the client's OpenAI request body unchanged; the gateway builds
it by concatenation (`encode_chat_request`) so the body is never re-serialized on the hot path.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import Field

from byorouter_common.contracts.base import Contract, Endpoint
from byorouter_common.contracts.keystore import ConnectionRef

SERVICE = "router"


class ChatRequest(Contract):
    request_id: str
    app_id: str
    connection_id: str
    body: dict[str, Any]


class StreamStart(Contract):
    """First message of a chat reply: who is answering."""

    provider: str
    model: str
    attempts: int = 1


class StreamDone(Contract):
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


class ModelCard(Contract):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(Contract):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)


CHAT = Endpoint(
    "byorouter.router.chat",
    ChatRequest,
    StreamDone,
    SERVICE,
    "An OpenAI chat completion for a connection, streamed back with Byo-Kind messages.",
)
MODELS = Endpoint(
    "byorouter.router.models",
    ConnectionRef,
    ModelList,
    SERVICE,
    "Models the connection's providers offer now, provider-prefixed.",
)
CANCEL_PREFIX = "byorouter.router.cancel"

ENDPOINTS = (CHAT, MODELS)


def cancel_subject(request_id: str) -> str:
    """The subject a gateway publishes to when the HTTP client of `request_id` went away."""
    return f"{CANCEL_PREFIX}.{request_id}"


def cancel_wildcard() -> str:
    """Every `cancel_subject`: what the router listens to and the gateway may publish."""
    return f"{CANCEL_PREFIX}.*"


def request_id_of_cancel(subject: str) -> str:
    """The request id a `cancel_subject` names."""
    return subject[len(CANCEL_PREFIX) + 1 :]


def encode_chat_request(request_id: str, app_id: str, connection_id: str, raw_body: bytes) -> bytes:
    """A `ChatRequest` as JSON, splicing in the already-validated raw JSON body."""
    return b"".join(
        (
            b'{"request_id":',
            orjson.dumps(request_id),
            b',"app_id":',
            orjson.dumps(app_id),
            b',"connection_id":',
            orjson.dumps(connection_id),
            b',"body":',
            raw_body,
            b"}",
        )
    )
