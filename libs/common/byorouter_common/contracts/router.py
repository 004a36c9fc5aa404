"""Router's subjects: the streamed chat call (embeddings and Responses go the same way), the model
list, cancellation and key tests; served by the router.

`byorouter.router.chat` answers with the streaming protocol (see `byorouter_common.bus`), not a
single reply. Its request embeds the client's OpenAI request body unchanged; the gateway builds
it by concatenation (`encode_chat_request`) so the body is never re-serialized on the hot path.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import Field, SecretStr, field_serializer

from byorouter_common.contracts.base import Contract, Endpoint
from byorouter_common.contracts.keystore import ConnectionRef, ProviderName

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


ModelKind = Literal["chat", "embedding"]


class ModelCard(Contract):
    """One entry of an OpenAI model list, plus what a model picker needs (extra fields the
    `openai` SDK passes through): the kind, a display name, the context length when the
    provider says it."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str
    kind: ModelKind = "chat"
    name: str | None = None
    context_length: int | None = None


class ModelList(Contract):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)


class ProviderTest(Contract):
    """Try a key by listing the provider's models; nothing is stored."""

    provider: ProviderName
    api_key: SecretStr | None = None
    base_url: str | None = Field(default=None, max_length=2048)
    # List the models of every provider, not only where a person picks one from the list
    # (the API's test-connection answers with the models found).
    list_models: bool = False

    @field_serializer("api_key", when_used="json")
    def _reveal(self, value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None


class ProviderTestResult(Contract):
    """The outcome in plain words a person understands, e.g. "Key works — 42 models available"."""

    ok: bool
    message: str
    model_count: int = 0
    # Filled for providers whose preferred model a person picks (OpenRouter), ids as the
    # provider names them.
    models: list[str] = Field(default_factory=list)


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
# Connect's "Test" buttons, before a key is saved.
PROVIDER_TEST = Endpoint(
    "byorouter.router.provider.test",
    ProviderTest,
    ProviderTestResult,
    SERVICE,
    "Try a provider key (list its models) and say in plain words whether it works.",
)
# What apps call besides chat, passed through to OpenAI-compatible providers; requests and replies
# as for chat (the request embeds the client's body; the reply is the streaming protocol).
EMBEDDINGS = Endpoint(
    "byorouter.router.embeddings",
    ChatRequest,
    StreamDone,
    SERVICE,
    "OpenAI embeddings for a connection, answered with Byo-Kind messages as chat is.",
)
RESPONSES = Endpoint(
    "byorouter.router.responses",
    ChatRequest,
    StreamDone,
    SERVICE,
    "An OpenAI Responses API call for a connection, streamed back with Byo-Kind messages.",
)
CANCEL_PREFIX = "byorouter.router.cancel"

# What operators may call (admin's permissions are derived from it); `PROVIDER_TEST` is Connect's
# and the gateway's (for headless apps) alone, so it is not here.
ENDPOINTS = (CHAT, MODELS)


def cancel_subject(request_id: str) -> str:
    """The subject a gateway publishes to when the HTTP client of `request_id` went away."""
    return f"{CANCEL_PREFIX}.{request_id}"


UPLOAD_PREFIX = "byorouter.router.upload"


def upload_subject(token: str) -> str:
    """Where the router copy that took a large chat request wants the request's other parts."""
    return f"{UPLOAD_PREFIX}.{token}"


def upload_wildcard() -> str:
    """Every `upload_subject`: what the gateway may publish the parts of a large request to."""
    return f"{UPLOAD_PREFIX}.*"


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
