"""The `anthropic` provider: OpenAI chat requests go out as Anthropic Messages and come back.

The translation both ways lives beside it (`request.py`, `response.py`); this module makes the
calls: Anthropic's endpoints, auth and error statuses, its stream read through `SseDecoder`,
and its paginated model list.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from yarl import URL

from byorouter_common.contracts.router import ModelCard
from byorouter_common.errors import ByoError
from byorouter_router.providers.anthropic.request import json_tool_name, to_messages_request
from byorouter_router.providers.anthropic.response import (
    StreamTranslator,
    mid_stream_error,
    to_chat_completion,
)
from byorouter_router.providers.base import ChatReply, Operation, ProviderCredential, model_card
from byorouter_router.providers.errors import (
    Timeouts,
    overloaded_error,
    status_error,
    transport_error,
    upstream_message,
)
from byorouter_router.providers.http import (
    JSON_HEADERS,
    SSE_HEADERS,
    StreamPace,
    answer_starts_by,
    get_model_list,
    post_chat,
    release_stream,
    request_bytes,
)
from byorouter_router.providers.sse import OversizedEvent, SseDecoder
from byorouter_router.upstream import endpoints_for

ANTHROPIC_BASE_URL: Final = "https://api.anthropic.com"
ANTHROPIC_VERSION: Final = "2023-06-01"
_OVERLOADED: Final = 529
_MODEL_PAGES: Final = 10


@dataclass(frozen=True, slots=True)
class AnthropicEndpoints:
    messages: URL
    models: URL


@lru_cache(maxsize=4096)
def anthropic_endpoints(provider: str, base_url: str, allow_private: bool) -> AnthropicEndpoints:
    """The messages and models URLs under `base_url` (with or without its `/v1`).

    The URL is checked by `endpoints_for`, the same validation and SSRF guard every provider uses.
    """
    checked = endpoints_for(provider, base_url, allow_private).models
    path = checked.path[: -len("/models")]
    if path.endswith("/v1"):
        path = path[:-3]
    return AnthropicEndpoints(
        messages=checked.with_path(path + "/v1/messages").with_query(checked.query),
        models=checked.with_path(path + "/v1/models").with_query(checked.query),
    )


class AnthropicProvider:
    """Anthropic's Messages API behind the OpenAI-shaped Provider protocol."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        timeouts: Timeouts,
        *,
        allow_private: bool,
        default_base_url: str = ANTHROPIC_BASE_URL,
        name: str = "anthropic",
    ) -> None:
        self.name = name
        self._session = session
        self._timeouts = timeouts
        self._default_base_url = default_base_url
        self._allow_private = allow_private

    def _endpoints(self, credential: ProviderCredential) -> AnthropicEndpoints:
        return anthropic_endpoints(
            self.name, credential.base_url or self._default_base_url, self._allow_private
        )

    def _headers(self, credential: ProviderCredential, stream: bool) -> dict[str, str]:
        headers = {
            **(SSE_HEADERS if stream else JSON_HEADERS),
            "anthropic-version": ANTHROPIC_VERSION,
        }
        key = credential.api_key.get_secret_value() if credential.api_key is not None else ""
        if key:
            # Anthropic authenticates with x-api-key; an Authorization header is never sent.
            headers["x-api-key"] = key
        return headers

    def _status_error(self, status: int, raw: bytes, headers: CIMultiDictProxy[str]) -> ByoError:
        if status == _OVERLOADED:
            return overloaded_error(self.name, raw, headers)
        return status_error(self.name, status, raw, headers)

    def serves(self, operation: Operation) -> bool:
        return operation == "chat"

    async def passthrough(
        self,
        operation: Operation,
        credential: ProviderCredential,
        model: str,
        body: dict[str, Any],
        reply: ChatReply,
        deadline: float,
    ) -> None:
        raise not_served(self.name, operation)

    async def chat(
        self,
        credential: ProviderCredential,
        model: str,
        body: dict[str, Any],
        reply: ChatReply,
        deadline: float,
    ) -> None:
        url = self._endpoints(credential).messages
        stream = body.get("stream") is True
        # Translated before any connection is made: a request Anthropic cannot take fails fast.
        data = request_bytes(to_messages_request(body, model))
        json_tool = json_tool_name(body)
        headers = self._headers(credential, stream)
        created = int(time.time())
        started = False
        pace = StreamPace(self.name, self._timeouts) if stream else None
        try:
            async with answer_starts_by(deadline, pace):
                response, answer = await post_chat(
                    self._session,
                    url,
                    data,
                    headers,
                    stream=stream,
                    on_status=self._status_error,
                    provider=self.name,
                )
            if pace is None:
                completion = orjson.dumps(
                    to_chat_completion(self._message(answer), model, created, json_tool=json_tool)
                )
                await reply.start()
                await reply.result(completion)
                return
            started = True
            await reply.start()
            options = body.get("stream_options")
            translator = StreamTranslator(
                model,
                created,
                include_usage=type(options) is dict and options.get("include_usage") is True,
                json_tool=json_tool,
            )
            try:
                await self._relay(response, reply, translator, pace)
            except BaseException:
                # Not released to the pool: closing is what tells the upstream to stop.
                response.close()
                raise
            release_stream(response)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise transport_error(
                exc, self.name, started=started, timeouts=self._timeouts
            ) from None
        finally:
            if pace is not None:
                pace.close()

    def _message(self, answer: bytes) -> dict[str, Any]:
        """A 2xx non-streamed answer, which must be a message and not an error."""
        try:
            parsed = orjson.loads(answer)
        except orjson.JSONDecodeError:
            raise self._broken("sent a malformed answer") from None
        if type(parsed) is not dict:
            raise self._broken("sent a malformed answer")
        if parsed.get("type") == "error":
            message, _, _ = upstream_message(answer)
            suffix = f": {message}" if message else "."
            raise ByoError(502, "upstream_error", f"The {self.name} provider failed{suffix}")
        return parsed

    async def _relay(
        self,
        response: aiohttp.ClientResponse,
        reply: ChatReply,
        translator: StreamTranslator,
        pace: StreamPace,
    ) -> None:
        """Translate every complete SSE event as it arrives; end with `done` or raise."""
        content = response.content
        events = SseDecoder()
        while True:
            data = await pace.read(content)
            if not data:
                break
            try:
                payloads = events.feed(data)
            except OversizedEvent:
                raise self._broken("sent an oversized stream event") from None
            if not payloads:
                continue
            pace.events_arrived()
            await self._translate_events(payloads, translator, reply)
            if translator.finished:
                await reply.done(translator.finish_reason, translator.usage)
                return
        payloads = events.end()
        if payloads:
            await self._translate_events(payloads, translator, reply)
        if not translator.finished:
            if translator.finish_reason is None:
                # No message_delta with a stop reason: the answer was cut short.
                raise self._broken("broke off the answer before it was complete")
            # A stop reason came but message_stop did not: the answer itself is whole.
            last: list[bytes] = []
            translator.finish(last)
            await reply.chunk(b"\n".join(last))
        await reply.done(translator.finish_reason, translator.usage)

    async def _translate_events(
        self, payloads: list[bytes], translator: StreamTranslator, reply: ChatReply
    ) -> None:
        """Translate the events' data, send their chunks, then raise any error among them."""
        lines: list[bytes] = []
        failure: ByoError | None = None
        for payload in payloads:
            if translator.finished:
                break
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                failure = self._broken("sent a malformed stream event")
                break
            if type(event) is not dict:
                failure = self._broken("sent a malformed stream event")
                break
            if event.get("type") == "error":
                failure = mid_stream_error(self.name, payload)
                break
            translator.translate(event, lines)
        if lines:
            await reply.chunk(lines[0] if len(lines) == 1 else b"\n".join(lines))
        if failure is not None:
            raise failure

    def _broken(self, what: str) -> ByoError:
        return ByoError(502, "upstream_error", f"The {self.name} provider {what}.")

    async def list_models(self, credential: ProviderCredential) -> list[ModelCard]:
        url = self._endpoints(credential).models
        headers = self._headers(credential, stream=False)
        cards: list[ModelCard] = []
        after: str | None = None
        for _ in range(_MODEL_PAGES):
            query = {"limit": "1000"} if after is None else {"limit": "1000", "after_id": after}
            entries, after = await self._model_page(url.update_query(query), headers)
            cards.extend(entries)
            if after is None:
                break
        return cards

    async def _model_page(
        self, url: URL, headers: dict[str, str]
    ) -> tuple[list[ModelCard], str | None]:
        """One page of Anthropic's model list and the id to continue after (None: last page)."""
        try:
            raw = await get_model_list(self._session, url, headers, on_status=self._status_error)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise transport_error(exc, self.name, started=False, timeouts=self._timeouts) from None
        try:
            listing = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise self._broken("sent a malformed model list") from None
        entries = listing.get("data") if type(listing) is dict else None
        if type(entries) is not list:
            raise self._broken("sent a malformed model list")
        cards = [
            model_card(
                self.name,
                entry,
                created=_timestamp(entry.get("created_at")),
                name_field="display_name",
            )
            for entry in entries
            if type(entry) is dict and type(entry.get("id")) is str
        ]
        last_id = listing.get("last_id")
        more = listing.get("has_more") is True and type(last_id) is str and bool(last_id)
        return cards, last_id if more else None


_NOT_SERVED: Final = {
    "embeddings": "Anthropic has no embeddings API, so the {name} provider cannot answer "
    "/v1/embeddings. Ask for an embedding model of another provider the user connected "
    "(openai/text-embedding-3-small, openrouter/..., selfhosted/...).",
    "responses": "The {name} provider does not speak OpenAI's Responses API, and BYORouter "
    "does not convert it (that would lose what Responses adds). Send this request to "
    "/v1/chat/completions, or ask for a model of an OpenAI-compatible provider.",
}


def not_served(name: str, operation: str) -> ByoError:
    """The 400 for an operation Anthropic has no API for."""
    return ByoError(
        400,
        "operation_not_supported",
        _NOT_SERVED.get(operation, "The {name} provider cannot answer this request.").format(
            name=name
        ),
        param="model",
    )


def _timestamp(created_at: Any) -> int:
    """Unix seconds from Anthropic's RFC 3339 `created_at`; 0 when absent or unreadable."""
    if type(created_at) is not str:
        return 0
    try:
        return int(datetime.fromisoformat(created_at).timestamp())
    except ValueError:
        return 0
