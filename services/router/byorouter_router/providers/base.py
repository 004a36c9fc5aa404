"""What a provider is to the router: it answers one chat request into a `ChatReply`, lists models.

A provider speaks its upstream's wire format and delivers OpenAI `chat.completion(.chunk)` JSON,
so providers with other formats (Anthropic) translate inside their own package and the
orchestration in `chat.py` never changes. Failures are raised as `ByoError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from pydantic import SecretStr

from byorouter_common.contracts.router import ModelCard
from byorouter_common.redact import redact


@dataclass(frozen=True, slots=True)
class ProviderCredential:
    """One provider of a connection, as the router uses it; `repr` never shows the key."""

    provider: str
    api_key: SecretStr | None = field(repr=False)
    base_url: str | None
    preferred_model: str | None = None
    # selfhosted through a tunnel (`base_url` is then the direct route while it is offline).
    tunnel_id: str | None = None
    tunnel_public_key: str | None = None

    def authorization(self) -> str | None:
        """The `Authorization` header value for this credential, or None when it has no key."""
        if self.api_key is None:
            return None
        key = self.api_key.get_secret_value()
        return f"Bearer {key}" if key else None


class ChatReply(Protocol):
    """Where a provider delivers its answer; the router's end of the bus stream."""

    async def start(self) -> None:
        """The upstream accepted the request (2xx): the answer is about to flow."""

    async def chunk(self, lines: bytes) -> None:
        """`chat.completion.chunk` JSON objects, one per line, as the upstream delivered them."""

    async def done(self, finish_reason: str | None, usage: dict[str, Any] | None) -> None:
        """The streamed answer ended cleanly."""

    async def result(self, body: bytes) -> None:
        """The whole `chat.completion` JSON of a non-streamed answer."""


# What an app may ask besides chat; OpenAI-compatible providers take them as the app sent them.
Operation = Literal["chat", "embeddings", "responses"]
PASSTHROUGH_PATHS: Final[dict[str, str]] = {
    "embeddings": "/embeddings",
    "responses": "/responses",
}


class Provider(Protocol):
    name: str

    def serves(self, operation: Operation) -> bool:
        """Whether this provider kind can answer `operation` natively."""

    async def passthrough(
        self,
        operation: Operation,
        credential: ProviderCredential,
        model: str,
        body: dict[str, Any],
        reply: ChatReply,
        deadline: float,
    ) -> None:
        """An embeddings or Responses request (`serves` said yes), answered as `chat` is."""

    async def chat(
        self,
        credential: ProviderCredential,
        model: str,
        body: dict[str, Any],
        reply: ChatReply,
        deadline: float,
    ) -> None:
        """Send `body` with `model` as the upstream's model id; answer into `reply`.

        `deadline` is the event-loop time by which the answer must have started (a non-streamed
        answer: finished).
        """

    async def list_models(self, credential: ProviderCredential) -> list[ModelCard]:
        """The upstream's models, ids already prefixed with the provider name."""


def model_card(
    provider: str,
    entry: dict[str, Any],
    *,
    created: int = 0,
    owned_by: str | None = None,
    name_field: str = "name",
) -> ModelCard:
    """A provider's model-list entry (which has a string `id`) as a prefixed `ModelCard`.

    Upstream names and lengths are optional extras: OpenRouter sends `name` and
    `context_length`, Anthropic `display_name`, OpenAI neither (its id is then the name).
    """
    upstream_id: str = entry["id"]
    name = entry.get(name_field)
    context = entry.get("context_length")
    architecture = entry.get("architecture")
    outputs = architecture.get("output_modalities") if type(architecture) is dict else None
    embeds = "embed" in upstream_id.lower() or (type(outputs) is list and "embeddings" in outputs)
    return ModelCard(
        id=f"{provider}/{upstream_id}",
        created=created,
        owned_by=owned_by or provider,
        kind="embedding" if embeds else "chat",
        name=redact(name)[:200] if type(name) is str and name else upstream_id,
        context_length=context if type(context) is int and context > 0 else None,
    )
