"""OpenAI-compatible upstreams: OpenAI itself and self-hosted servers (vLLM, Ollama, llama.cpp).

The request body goes out as the app sent it, with only `model` replaced. A streamed answer is
relayed as it arrives: each read from the upstream becomes one `chunk` carrying every complete
SSE `data:` payload in it, byte for byte; each payload is parsed once, only to learn the finish
reason and usage and to catch in-stream errors.

Self-hosted servers differ from OpenAI in small ways that `SelfHostedProvider` absorbs:
- reasoning text as `reasoning` (Ollama, OpenRouter) rather than `reasoning_content` (vLLM,
  DeepSeek): renamed so clients always read `reasoning_content`; only events that carry it are
  re-encoded, found by a substring check before anything else is looked at;
- usage sent always, or never, whatever `stream_options` says: the router always asks and
  strips what the client did not ask for (`usage.py`), and a stream without usage still ends
  with `done` (usage None);
- errors as a flat `{"error": "text"}` or `{"detail": ...}` body, and as a `data:` event in the
  middle of a stream: both become the error envelope (`errors.upstream_message`);
- Ollama bound to localhost answers a bare 403 when the Host header is not a local name, which is
  what a tunnel or reverse proxy that does not rewrite Host sends. The router cannot send
  `Host: localhost` itself (the tunnel routes by Host), so it says what to fix instead of
  reporting the (absent) key as rejected.

Over 500 lines: `OpenAIProvider` and `SelfHostedProvider` share one relay and one `_exchange`;
the self-hosted quirks are the next to move into their own module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Final

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from byorouter_common.contracts.router import ModelCard
from byorouter_common.errors import ByoError
from byorouter_common.redact import redact
from byorouter_router.providers.base import (
    PASSTHROUGH_PATHS,
    ChatReply,
    Operation,
    ProviderCredential,
    model_card,
)
from byorouter_router.providers.errors import (
    MAX_ERROR_BODY,
    Timeouts,
    status_error,
    transport_error,
    upstream_message,
)
from byorouter_router.providers.http import (
    JSON_HEADERS,
    MAX_MODEL_LIST,
    SSE_HEADERS,
    StreamPace,
    answer_starts_by,
    get_model_list,
    post_chat,
    read_answer,
    read_at_most,
    release_stream,
    request_bytes,
)
from byorouter_router.providers.sse import OversizedEvent, SseDecoder
from byorouter_router.providers.tunnel import TunnelOffline, TunnelResponse, TunnelTransport
from byorouter_router.upstream import UpstreamEndpoints, endpoints_for

OPENAI_BASE_URL: Final = "https://api.openai.com/v1"
# What a chat answer is read from: the direct route's HTTP response or the tunnel's.
UpstreamResponse = aiohttp.ClientResponse | TunnelResponse
_DONE: Final = b"[DONE]"
# A quote inside a JSON string is escaped, so these bytes occur only as the key itself (or the
# rare value "reasoning"), never inside text and never as part of "reasoning_content".
_REASONING_KEY: Final = b'"reasoning"'


class OpenAICompatProvider:
    """One OpenAI-compatible provider kind (`openai`, `selfhosted`), sharing the router's pool.

    Subclasses adapt one upstream by overriding the small hooks: `_headers`, `_upstream_model`,
    `_endpoints`, `_status_error`, and `renames_reasoning`.
    """

    # Whether `reasoning` in a delta or message is handed on as `reasoning_content`.
    renames_reasoning: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        session: aiohttp.ClientSession,
        timeouts: Timeouts,
        *,
        default_base_url: str | None,
        allow_private: bool,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._session = session
        self._timeouts = timeouts
        self._default_base_url = default_base_url
        self._allow_private = allow_private
        # Built once: the headers every call to this upstream carries besides its key.
        self._json_headers = {**JSON_HEADERS, **(extra_headers or {})}
        self._sse_headers = {**SSE_HEADERS, **(extra_headers or {})}

    def _endpoints(self, credential: ProviderCredential) -> UpstreamEndpoints:
        base_url = credential.base_url or self._default_base_url
        if not base_url:
            raise ByoError(
                400,
                "provider_misconfigured",
                f"The {self.name} provider on this connection has no base URL.",
            )
        return endpoints_for(self.name, base_url, self._allow_private)

    def _headers(self, credential: ProviderCredential, stream: bool) -> dict[str, str]:
        headers = dict(self._sse_headers if stream else self._json_headers)
        authorization = credential.authorization()
        if authorization is not None:
            headers["Authorization"] = authorization
        return headers

    def _upstream_model(self, credential: ProviderCredential, model: str) -> str:
        """The upstream's model id for the part of the app's model id after the provider."""
        return model

    def _status_error(self, status: int, raw: bytes, headers: CIMultiDictProxy[str]) -> ByoError:
        return status_error(self.name, status, raw, headers)

    async def chat(
        self,
        credential: ProviderCredential,
        model: str,
        body: dict[str, Any],
        reply: ChatReply,
        deadline: float,
    ) -> None:
        stream = body.get("stream") is True
        body["model"] = self._upstream_model(credential, model)
        data = request_bytes(body)
        await self._exchange(
            credential,
            data,
            reply,
            deadline,
            stream=stream,
            operation="chat",
            check=lambda answer: _check_completion(self.name, answer, self.renames_reasoning),
            relay=self._relay,
        )

    def serves(self, operation: Operation) -> bool:
        return True

    async def passthrough(
        self,
        operation: Operation,
        credential: ProviderCredential,
        model: str,
        body: dict[str, Any],
        reply: ChatReply,
        deadline: float,
    ) -> None:
        """Embeddings or a Responses call, sent as the app wrote it with only `model` replaced;
        the answer handed on unchanged (a Responses stream event by event, names kept in each
        event's `type`)."""
        stream = operation == "responses" and body.get("stream") is True
        body["model"] = self._upstream_model(credential, model)
        data = request_bytes(body)
        await self._exchange(
            credential,
            data,
            reply,
            deadline,
            stream=stream,
            operation=operation,
            check=self._checked_passthrough,
            relay=self._relay_response_events,
        )

    def _checked_passthrough(self, answer: bytes) -> bytes:
        _check_passthrough_answer(self.name, answer)
        return answer

    async def _exchange(
        self,
        credential: ProviderCredential,
        data: bytes,
        reply: ChatReply,
        deadline: float,
        *,
        stream: bool,
        operation: Operation,
        check: Callable[[bytes], bytes],
        relay: Callable[[UpstreamResponse, ChatReply, StreamPace], Awaitable[None]],
    ) -> None:
        """One upstream call of any operation: a whole answer checked then handed on, or a
        stream relayed; transport failures said in the provider's name."""
        headers = self._headers(credential, stream)
        started = False
        pace = StreamPace(self.name, self._timeouts) if stream else None
        try:
            async with answer_starts_by(deadline, pace):
                response, answer = await self._post_chat(
                    credential, data, headers, stream=stream, operation=operation
                )
            if pace is None:
                answer = check(answer)
                await reply.start()
                await reply.result(answer)
                return
            started = True
            await reply.start()
            try:
                await relay(response, reply, pace)
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

    async def _relay_response_events(
        self, response: UpstreamResponse, reply: ChatReply, pace: StreamPace
    ) -> None:
        """A Responses event stream, passed on until its terminal event (which holds the usage).

        The stream has no `[DONE]`: it ends with `response.completed` (or `.incomplete`,
        `.failed`); an `error` event is the upstream's failure midway.
        """
        content = response.content
        events = SseDecoder()
        while True:
            data = await pace.read(content)
            if not data:
                payloads = events.end()
                if not payloads:
                    raise self._broken("ended the stream before the response was complete")
            else:
                try:
                    payloads = events.feed(data)
                except OversizedEvent:
                    raise self._broken("sent an oversized stream event") from None
                if not payloads:
                    continue
                pace.events_arrived()
            kept: list[bytes] = []
            ending: dict[str, Any] | None = None
            failure: ByoError | None = None
            for payload in payloads:
                if payload == _DONE:
                    continue
                try:
                    event = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    event = None
                if type(event) is not dict:
                    failure = self._broken("sent a malformed stream event")
                    break
                kind = event.get("type")
                if kind == "error" or (kind is None and event.get("error") is not None):
                    failure = self._stream_error(payload)
                    break
                kept.append(orjson.dumps(event) if b"\n" in payload else payload)
                if kind in _RESPONSE_ENDINGS:
                    ending = event
                    break
            if kept:
                await reply.chunk(b"\n".join(kept))
            if failure is not None:
                raise failure
            if ending is not None:
                answer = ending.get("response")
                answer = answer if type(answer) is dict else {}
                usage = answer.get("usage")
                status = answer.get("status")
                await reply.done(
                    status if type(status) is str else None,
                    usage if type(usage) is dict else None,
                )
                return
            if not data:
                raise self._broken("ended the stream before the response was complete")

    async def _post_chat(
        self,
        credential: ProviderCredential,
        data: bytes,
        headers: dict[str, str],
        *,
        stream: bool,
        operation: Operation = "chat",
    ) -> tuple[UpstreamResponse, bytes]:
        """The upstream's answer to a chat (or passed-through) request: open if streamed, else
        read whole."""
        url = self._endpoints(credential).of(operation)
        return await post_chat(
            self._session,
            url,
            data,
            headers,
            stream=stream,
            on_status=self._status_error,
            provider=self.name,
        )

    async def _relay(self, response: UpstreamResponse, reply: ChatReply, pace: StreamPace) -> None:
        """Pass every complete SSE event on as it arrives; end with `done` or raise."""
        content = response.content
        events = SseDecoder()
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        relayed = False
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
            finished, finish_reason, usage, failure = self._read_events(
                payloads, events.joined_lines, finish_reason, usage
            )
            if payloads:
                relayed = True
                await reply.chunk(payloads[0] if len(payloads) == 1 else b"\n".join(payloads))
            if failure is not None:
                raise failure
            if finished:
                await reply.done(finish_reason, usage)
                return
        # The upstream ended without [DONE]: accept it if it ended cleanly after an answer.
        payloads = events.end()
        if payloads:
            _, finish_reason, usage, failure = self._read_events(
                payloads, events.joined_lines, finish_reason, usage
            )
            if payloads:
                relayed = True
                await reply.chunk(b"\n".join(payloads))
            if failure is not None:
                raise failure
        if not relayed:
            raise self._broken("ended the stream without an answer")
        await reply.done(finish_reason, usage)

    def _read_events(
        self,
        payloads: list[bytes],
        joined_lines: bool,
        finish_reason: str | None,
        usage: dict[str, Any] | None,
    ) -> tuple[bool, str | None, dict[str, Any] | None, ByoError | None]:
        """Whether [DONE] came, what the events told, and the error among them if any.

        `payloads` is left holding what goes on to the client, in place: the events before
        [DONE] or an error, a renamed event where reasoning was renamed.
        """
        for i, payload in enumerate(payloads):
            if payload == _DONE:
                del payloads[i:]
                return True, finish_reason, usage, None
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                event = None
            if type(event) is not dict:
                del payloads[i:]
                return False, finish_reason, usage, self._broken("sent a malformed stream event")
            # OpenRouter's mid-stream error also carries choices (finish_reason "error").
            if event.get("error") is not None:
                del payloads[i:]
                return False, finish_reason, usage, self._stream_error(payload)
            choices = event.get("choices")
            if type(choices) is list:
                for choice in choices:
                    if type(choice) is dict:
                        reason = choice.get("finish_reason")
                        if type(reason) is str:
                            finish_reason = reason
            reported = event.get("usage")
            if type(reported) is dict:
                usage = reported
            if self.renames_reasoning and _REASONING_KEY in payload:
                payloads[i] = payload = _with_reasoning_content(event, "delta", payload)
            if joined_lines and b"\n" in payload:
                # Chunks carry one event per line: an event sent as several data lines is
                # re-encoded onto one.
                payloads[i] = orjson.dumps(event)
        return False, finish_reason, usage, None

    def _broken(self, what: str) -> ByoError:
        return ByoError(502, "upstream_error", f"The {self.name} provider {what}.")

    def _stream_error(self, payload: bytes) -> ByoError:
        message, _, _ = upstream_message(payload)
        suffix = f": {message}" if message else "."
        return ByoError(
            502,
            "upstream_error",
            f"The {self.name} provider reported an error in the middle of the answer{suffix}",
        )

    async def list_models(self, credential: ProviderCredential) -> list[ModelCard]:
        url = self._endpoints(credential).models
        headers = self._headers(credential, stream=False)
        try:
            raw = await get_model_list(self._session, url, headers, on_status=self._status_error)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise transport_error(exc, self.name, started=False, timeouts=self._timeouts) from None
        return self._model_cards(raw)

    def _model_cards(self, raw: bytes) -> list[ModelCard]:
        """An OpenAI model list's entries, ids prefixed with this provider's name."""
        try:
            listing = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise self._broken("sent a malformed model list") from None
        entries = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(entries, list):
            raise self._broken("sent a malformed model list")
        cards: list[ModelCard] = []
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                continue
            created = entry.get("created")
            owned_by = entry.get("owned_by")
            cards.append(
                model_card(
                    self.name,
                    entry,
                    created=created if isinstance(created, int) else 0,
                    owned_by=redact(owned_by) if isinstance(owned_by, str) and owned_by else None,
                )
            )
        return cards


def _with_reasoning_content(event: dict[str, Any], part: str, payload: bytes) -> bytes:
    """`payload` with each choice's `reasoning` text as `reasoning_content`, if it has any.

    `part` is "delta" (a chunk) or "message" (a whole answer). A choice that already carries
    `reasoning_content` is left alone, and a payload nothing was renamed in is returned as is.
    """
    renamed = False
    choices = event.get("choices")
    if type(choices) is list:
        for choice in choices:
            content = choice.get(part) if type(choice) is dict else None
            if (
                type(content) is dict
                and type(content.get("reasoning")) is str
                and content.get("reasoning_content") is None
            ):
                content.pop("reasoning_content", None)
                content["reasoning_content"] = content.pop("reasoning")
                renamed = True
    return orjson.dumps(event) if renamed else payload


# The events a Responses stream ends with.
_RESPONSE_ENDINGS: Final = frozenset(
    {"response.completed", "response.incomplete", "response.failed"}
)


def _check_passthrough_answer(provider: str, answer: bytes) -> None:
    """Refuse an answer that is not JSON, or that is only an error sent with a 200."""
    try:
        parsed = orjson.loads(answer)
    except orjson.JSONDecodeError:
        parsed = None
    if type(parsed) is not dict:
        raise ByoError(502, "upstream_error", f"The {provider} provider sent a malformed answer.")
    if parsed.get("error") is not None and "data" not in parsed and "output" not in parsed:
        message, _, _ = upstream_message(answer)
        suffix = f": {message}" if message else "."
        raise ByoError(502, "upstream_error", f"The {provider} provider failed{suffix}")


def _check_completion(provider: str, answer: bytes, renames_reasoning: bool = False) -> bytes:
    """The answer to hand on, once checked to be a completion and not an error sent as 200."""
    try:
        parsed = orjson.loads(answer)
    except orjson.JSONDecodeError:
        raise ByoError(
            502, "upstream_error", f"The {provider} provider sent a malformed answer."
        ) from None
    if type(parsed) is not dict:
        raise ByoError(502, "upstream_error", f"The {provider} provider sent a malformed answer.")
    if "error" in parsed and "choices" not in parsed:
        message, _, _ = upstream_message(answer)
        suffix = f": {message}" if message else "."
        raise ByoError(502, "upstream_error", f"The {provider} provider failed{suffix}")
    if renames_reasoning and _REASONING_KEY in answer:
        return _with_reasoning_content(parsed, "message", answer)
    return answer


class SelfHostedProvider(OpenAICompatProvider):
    """A server the user runs (vLLM, Ollama, llama.cpp, LM Studio), reached through its tunnel
    or by its base URL: the tunnel when it has one, the URL while the tunnel is offline."""

    renames_reasoning = True

    def __init__(
        self,
        session: aiohttp.ClientSession,
        timeouts: Timeouts,
        *,
        allow_private: bool,
        tunnels: TunnelTransport | None = None,
    ) -> None:
        super().__init__(
            "selfhosted", session, timeouts, default_base_url=None, allow_private=allow_private
        )
        self._tunnels = tunnels

    async def _post_chat(
        self,
        credential: ProviderCredential,
        data: bytes,
        headers: dict[str, str],
        *,
        stream: bool,
        operation: Operation = "chat",
    ) -> tuple[UpstreamResponse, bytes]:
        if credential.tunnel_id is None or self._tunnels is None:
            return await super()._post_chat(
                credential, data, headers, stream=stream, operation=operation
            )
        path = PASSTHROUGH_PATHS.get(operation, "/chat/completions")
        try:
            response = await self._through_tunnel(credential, "POST", path, data, stream=stream)
        except TunnelOffline:
            if credential.base_url:
                return await super()._post_chat(
                    credential, data, headers, stream=stream, operation=operation
                )
            raise
        if response.status >= 300:
            try:
                raw = await read_at_most(response, MAX_ERROR_BODY)
            finally:
                response.close()
            raise self._status_error(response.status, raw, response.headers)
        if stream:
            return response, b""
        try:
            return response, await read_answer(response, self.name)
        finally:
            response.release()

    async def _through_tunnel(
        self,
        credential: ProviderCredential,
        method: str,
        path: str,
        data: bytes,
        *,
        stream: bool = False,
    ) -> TunnelResponse:
        assert self._tunnels is not None
        assert credential.tunnel_id is not None
        if credential.tunnel_public_key is None:
            # Bound at the client's first connect: a tunnel never connected is offline.
            raise TunnelOffline()
        key = credential.api_key.get_secret_value() if credential.api_key else None
        return await self._tunnels.call(
            credential.tunnel_id,
            credential.tunnel_public_key,
            method,
            path,
            data,
            stream=stream,
            upstream_key=key or None,
        )

    async def list_models(self, credential: ProviderCredential) -> list[ModelCard]:
        if credential.tunnel_id is None or self._tunnels is None:
            return await super().list_models(credential)
        try:
            response = await self._through_tunnel(credential, "GET", "/models", b"")
        except TunnelOffline:
            if credential.base_url:
                return await super().list_models(credential)
            return []  # an offline tunnel offers no models now
        try:
            raw = await read_at_most(response, MAX_MODEL_LIST)
        finally:
            response.close()
        if response.status >= 300:
            raise self._status_error(response.status, raw[:MAX_ERROR_BODY], response.headers)
        return self._model_cards(raw)

    def _status_error(self, status: int, raw: bytes, headers: CIMultiDictProxy[str]) -> ByoError:
        if status == 403 and not raw.strip():
            # Ollama's answer to a Host it does not consider local; no key was looked at.
            return ByoError(
                400,
                "provider_misconfigured",
                "The selfhosted server refused the request (403) without a reason. Ollama does "
                "this when a tunnel or reverse proxy in front of it passes on its public host "
                "name: make the proxy rewrite the Host header to localhost:11434 (ngrok: "
                "--host-header=rewrite), or have Ollama listen on 0.0.0.0.",
            )
        return super()._status_error(status, raw, headers)
