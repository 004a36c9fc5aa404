"""The `anthropic` provider: OpenAI chat requests go out as Anthropic Messages and come back.

Apps speak OpenAI's Chat Completions; Anthropic speaks its Messages API. `to_messages_request`
translates a request, `to_chat_completion` a non-streamed answer and `StreamTranslator` a streamed
one, event by event: each upstream SSE event is parsed once with orjson, and each outgoing
`chat.completion.chunk` is spliced together from bytes, never built through pydantic.
"""

from __future__ import annotations

import asyncio
import secrets
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
from byorouter_router.providers.base import ChatReply, ProviderCredential
from byorouter_router.providers.errors import (
    Timeouts,
    overloaded_error,
    status_error,
    transport_error,
    upstream_message,
)
from byorouter_router.providers.openai_compat import (
    MAX_EVENT_BYTES,
    MAX_MODEL_LIST,
    post_chat,
    read_at_most,
)
from byorouter_router.upstream import endpoints_for

ANTHROPIC_BASE_URL: Final = "https://api.anthropic.com"
ANTHROPIC_VERSION: Final = "2023-06-01"
# Anthropic requires max_tokens; OpenAI apps often leave it out and expect "as long as needed".
DEFAULT_MAX_TOKENS: Final = 4096
_OVERLOADED: Final = 529
_MODELS_TIMEOUT: Final = aiohttp.ClientTimeout(total=10)
_MODEL_PAGES: Final = 10

# Anthropic's stop reasons as OpenAI finish reasons; an unknown future reason reads as "stop".
FINISH_REASONS: Final[dict[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_TOOL_CHOICES: Final[dict[str, dict[str, Any]]] = {
    "auto": {"type": "auto"},
    "required": {"type": "any"},
    "none": {"type": "none"},
}
_EMPTY_SCHEMA: Final[dict[str, Any]] = {"type": "object", "properties": {}}

Block = dict[str, Any]
Content = str | list[Block]


def _invalid(message: str, param: str, code: str = "invalid_request") -> ByoError:
    # Messages name where the problem is, never the rejected value: it may be anything.
    return ByoError(400, code, message, param=param)


def _unsupported(message: str, param: str) -> ByoError:
    return _invalid(message, param, "unsupported_parameter")


# --- OpenAI request -> Anthropic request ---------------------------------------------------


def to_messages_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The Anthropic Messages request for an OpenAI chat request `body`, for upstream `model`."""
    messages = body.get("messages")
    if type(messages) is not list or not messages:
        raise _invalid("The request has no messages.", "messages")
    system, turns = _translate_messages(messages)
    request: dict[str, Any] = {
        "model": model,
        "messages": turns,
        "max_tokens": _max_tokens(body),
    }
    if system is not None:
        request["system"] = system
    stop = _stop_sequences(body.get("stop"))
    if stop:
        request["stop_sequences"] = stop
    for field in ("temperature", "top_p", "top_k"):
        value = body.get(field)
        if value is not None:
            request[field] = value
    n = body.get("n")
    if n is not None and n != 1:
        raise _unsupported("The anthropic provider answers with one choice only (n=1).", "n")
    response_format = body.get("response_format")
    if response_format is not None and (
        type(response_format) is not dict or response_format.get("type") != "text"
    ):
        raise _unsupported(
            "The anthropic provider does not support response_format; "
            "describe the wanted JSON in the prompt or use a tool instead.",
            "response_format",
        )
    tools = body.get("tools")
    if tools is not None:
        translated = _tools(tools)
        if translated:
            request["tools"] = translated
            choice = _tool_choice(body.get("tool_choice"))
            if body.get("parallel_tool_calls") is False:
                choice = dict(choice or _TOOL_CHOICES["auto"])
                if choice["type"] != "none":
                    choice["disable_parallel_tool_use"] = True
            if choice is not None:
                request["tool_choice"] = choice
    user = body.get("user")
    if type(user) is str and user:
        # OpenAI's `user` and Anthropic's metadata.user_id are both an opaque end-user id.
        request["metadata"] = {"user_id": user}
    if body.get("stream") is True:
        request["stream"] = True
    return request


def _translate_messages(
    messages: list[Any],
) -> tuple[Content | None, list[dict[str, Any]]]:
    """(system, turns): system and developer messages lifted out, the rest as Anthropic turns."""
    system: list[Block] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if type(message) is not dict:
            raise _invalid(f"{where} is not a message object.", "messages")
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_system_blocks(message.get("content"), where))
        elif role == "user":
            _append_turn(turns, "user", _user_content(message.get("content"), where))
        elif role == "assistant":
            content = _assistant_content(message, where)
            # An empty assistant turn (no text, no tool calls) is refused by Anthropic; it adds
            # nothing, so it is left out.
            if content:
                _append_turn(turns, "assistant", content)
        elif role == "tool":
            # Tool results are user content to Anthropic; consecutive ones merge into one turn.
            _append_turn(turns, "user", [_tool_result(message, where)])
        else:
            raise _unsupported(
                f"{where} has a role the anthropic provider does not support.", "messages"
            )
    if not system:
        return None, turns
    if len(system) == 1 and "cache_control" not in system[0]:
        return system[0]["text"], turns
    return system, turns


def _append_turn(turns: list[dict[str, Any]], role: str, content: Content) -> None:
    """Add a turn, merging it into the previous one of the same role: Anthropic wants turns to
    alternate between user and assistant."""
    if turns and turns[-1]["role"] == role:
        previous = turns[-1]
        previous["content"] = _as_blocks(previous["content"]) + _as_blocks(content)
        return
    turns.append({"role": role, "content": content})


def _as_blocks(content: Content) -> list[Block]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _system_blocks(content: Any, where: str) -> list[Block]:
    if type(content) is str:
        return [{"type": "text", "text": content}] if content else []
    if type(content) is list:
        return [_text_part(part, f"{where}.content[{j}]") for j, part in enumerate(content)]
    raise _invalid(f"{where} has no text content.", "messages")


def _text_part(part: Any, where: str) -> Block:
    if type(part) is not dict or part.get("type") != "text" or type(part.get("text")) is not str:
        raise _invalid(f"{where} must be a text content part.", "messages")
    block: Block = {"type": "text", "text": part["text"]}
    if "cache_control" in part:
        # Anthropic's prompt caching marker, which some apps already set on OpenAI parts.
        block["cache_control"] = part["cache_control"]
    return block


def _user_content(content: Any, where: str) -> Content:
    if type(content) is str:
        return content
    if type(content) is list:
        return [_content_part(part, f"{where}.content[{j}]") for j, part in enumerate(content)]
    raise _invalid(f"{where} has no content.", "messages")


def _content_part(part: Any, where: str) -> Block:
    kind = part.get("type") if type(part) is dict else None
    if kind == "text":
        return _text_part(part, where)
    if kind == "image_url":
        return _image(part.get("image_url"), where)
    raise _unsupported(
        f"{where}: only text and image_url content parts are supported by the anthropic provider.",
        "messages",
    )


def _image(image_url: Any, where: str) -> Block:
    """An image block from an OpenAI image_url: a data: URL inline (base64), else by URL."""
    url = image_url.get("url") if type(image_url) is dict else image_url
    if type(url) is not str:
        raise _invalid(f"{where} has no image URL.", "messages")
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type, *params = header.split(";")
        if not comma or "base64" not in params or not media_type.startswith("image/"):
            raise _invalid(f"{where} is not a base64 image data: URL.", "messages")
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _invalid(f"{where} must be an http(s) or data: URL.", "messages")


def _assistant_content(message: dict[str, Any], where: str) -> Content:
    content = message.get("content")
    tool_calls = message.get("tool_calls")
    blocks: list[Block] = []
    if type(content) is str:
        if not tool_calls:
            return content
        if content:
            blocks.append({"type": "text", "text": content})
    elif type(content) is list:
        for j, part in enumerate(content):
            # An assistant's earlier refusal is text to Anthropic.
            if type(part) is dict and part.get("type") == "refusal":
                part = {"type": "text", "text": part.get("refusal")}
            blocks.append(_text_part(part, f"{where}.content[{j}]"))
    elif content is not None:
        raise _invalid(f"{where} has content of an unknown shape.", "messages")
    if tool_calls is not None:
        if type(tool_calls) is not list:
            raise _invalid(f"{where}.tool_calls must be a list.", "messages")
        blocks.extend(
            _tool_use(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(tool_calls)
        )
    return blocks


def _tool_use(call: Any, where: str) -> Block:
    function = call.get("function") if type(call) is dict else None
    if (
        type(function) is not dict
        or type(call.get("id")) is not str
        or type(function.get("name")) is not str
    ):
        raise _invalid(f"{where} must have an id and a function name.", "messages")
    arguments = function.get("arguments")
    if arguments is None or arguments == "":
        tool_input: Any = {}
    elif type(arguments) is str:
        try:
            tool_input = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            tool_input = None
    else:
        tool_input = None
    if type(tool_input) is not dict:
        raise _invalid(f"{where}.function.arguments must be a JSON object.", "messages")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": tool_input}


def _tool_result(message: dict[str, Any], where: str) -> Block:
    tool_use_id = message.get("tool_call_id")
    if type(tool_use_id) is not str or not tool_use_id:
        raise _invalid(f"{where} has no tool_call_id.", "messages")
    block: Block = {"type": "tool_result", "tool_use_id": tool_use_id}
    content = message.get("content")
    if content is None or content == "":
        return block
    block["content"] = _user_content(content, where)
    return block


def _max_tokens(body: dict[str, Any]) -> int:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if type(value) is not int or value < 1:
            raise _invalid(f"{field} must be a positive integer.", field)
        return value
    return DEFAULT_MAX_TOKENS


def _stop_sequences(stop: Any) -> list[str]:
    if stop is None:
        return []
    if type(stop) is str:
        return [stop] if stop else []
    if type(stop) is list and all(type(s) is str for s in stop):
        return [s for s in stop if s]
    raise _invalid("stop must be a string or a list of strings.", "stop")


def _tools(tools: Any) -> list[Block]:
    if type(tools) is not list:
        raise _invalid("tools must be a list.", "tools")
    translated: list[Block] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if type(tool) is dict else None
        if (
            type(tool) is not dict
            or tool.get("type", "function") != "function"
            or type(function) is not dict
            or type(function.get("name")) is not str
        ):
            raise _unsupported(
                f"tools[{i}] must be a function tool with a name; the anthropic provider "
                "supports no other tool types.",
                "tools",
            )
        parameters = function.get("parameters")
        block: Block = {
            "name": function["name"],
            "input_schema": parameters if type(parameters) is dict else _EMPTY_SCHEMA,
        }
        description = function.get("description")
        if type(description) is str and description:
            block["description"] = description
        translated.append(block)
    return translated


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if type(choice) is str and choice in _TOOL_CHOICES:
        return dict(_TOOL_CHOICES[choice])
    if type(choice) is dict and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if type(function) is dict else None
        if type(name) is str and name:
            return {"type": "tool", "name": name}
    raise _invalid(
        'tool_choice must be "auto", "required", "none" or a function to call.', "tool_choice"
    )


# --- Anthropic answer -> OpenAI answer -----------------------------------------------------


def _count(value: Any) -> int:
    return value if type(value) is int else 0


def to_openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """OpenAI usage from Anthropic's: cache reads and writes are prompt tokens too, as in OpenAI."""
    cache_read = _count(usage.get("cache_read_input_tokens"))
    prompt = (
        _count(usage.get("input_tokens"))
        + cache_read
        + _count(usage.get("cache_creation_input_tokens"))
    )
    completion = _count(usage.get("output_tokens"))
    translated: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cache_read:
        translated["prompt_tokens_details"] = {"cached_tokens": cache_read}
    return translated


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if type(stop_reason) is str else "stop"


def to_chat_completion(message: dict[str, Any], model: str, created: int) -> dict[str, Any]:
    """The OpenAI `chat.completion` for a non-streamed Anthropic message."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    content = message.get("content")
    for block in content if type(content) is list else ():
        if type(block) is not dict:
            continue
        kind = block.get("type")
        if kind == "text" and type(block.get("text")) is str:
            texts.append(block["text"])
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
        # Thinking and server-tool blocks have no OpenAI counterpart and are left out.
    answer: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if tool_calls:
        answer["tool_calls"] = tool_calls
    usage = message.get("usage")
    message_id = message.get("id")
    message_model = message.get("model")
    return {
        "id": message_id if type(message_id) is str else "msg_" + secrets.token_hex(12),
        "object": "chat.completion",
        "created": created,
        "model": message_model if type(message_model) is str else model,
        "choices": [
            {
                "index": 0,
                "message": answer,
                "logprobs": None,
                "finish_reason": finish_reason(message.get("stop_reason")),
            }
        ],
        "usage": to_openai_usage(usage if type(usage) is dict else {}),
    }


class StreamTranslator:
    """Turns Anthropic stream events into OpenAI `chat.completion.chunk` JSON, one per line.

    Each tool_use content block gets the next OpenAI tool_calls index (0, 1, ...) and its
    input_json_delta fragments are sent under that index, so parallel calls never collide.
    """

    __slots__ = (
        "_created",
        "_include_usage",
        "_input_usage",
        "_output_tokens",
        "_prefix",
        "_tool_indexes",
        "finish_reason",
        "finished",
    )

    def __init__(self, model: str, created: int, *, include_usage: bool) -> None:
        self._include_usage = include_usage
        self._input_usage: dict[str, Any] = {}
        self._output_tokens = 0
        # Content block index -> OpenAI tool_calls index.
        self._tool_indexes: dict[int, int] = {}
        self._prefix = _chunk_prefix("msg_" + secrets.token_hex(12), model, created)
        self.finish_reason: str | None = None
        self.finished = False
        self._created = created

    @property
    def usage(self) -> dict[str, Any] | None:
        if not self._input_usage and not self._output_tokens:
            return None
        return to_openai_usage({**self._input_usage, "output_tokens": self._output_tokens})

    def translate(self, event: dict[str, Any], out: list[bytes]) -> None:
        """Append the chunks for one Anthropic event to `out`; events without a counterpart
        (ping, content_block_stop, thinking) add nothing."""
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta")
            if type(delta) is not dict:
                return
            delta_kind = delta.get("type")
            if delta_kind == "text_delta":
                text = delta.get("text")
                if type(text) is str and text:
                    out.append(self._chunk(b'{"content":' + orjson.dumps(text) + b"}"))
            elif delta_kind == "input_json_delta":
                block_index = event.get("index")
                index = self._tool_indexes.get(block_index) if type(block_index) is int else None
                fragment = delta.get("partial_json")
                if index is not None and type(fragment) is str and fragment:
                    out.append(
                        self._chunk(
                            b'{"tool_calls":[{"index":%d,"function":{"arguments":%b}}]}'
                            % (index, orjson.dumps(fragment))
                        )
                    )
        elif kind == "content_block_start":
            block = event.get("content_block")
            if type(block) is not dict:
                return
            block_kind = block.get("type")
            if block_kind == "tool_use":
                block_index = event.get("index")
                if type(block_index) is not int:
                    return
                index = len(self._tool_indexes)
                self._tool_indexes[block_index] = index
                tool_input = block.get("input")
                arguments = orjson.dumps(tool_input).decode() if tool_input else ""
                out.append(
                    self._chunk(
                        b'{"tool_calls":[{"index":%d,"id":%b,"type":"function",'
                        b'"function":{"name":%b,"arguments":%b}}]}'
                        % (
                            index,
                            orjson.dumps(block.get("id")),
                            orjson.dumps(block.get("name")),
                            orjson.dumps(arguments),
                        )
                    )
                )
            elif block_kind == "text":
                text = block.get("text")
                if type(text) is str and text:
                    out.append(self._chunk(b'{"content":' + orjson.dumps(text) + b"}"))
        elif kind == "message_start":
            message = event.get("message")
            if type(message) is dict:
                message_id = message.get("id")
                model = message.get("model")
                if type(message_id) is str and type(model) is str:
                    self._prefix = _chunk_prefix(message_id, model, self._created)
                usage = message.get("usage")
                if type(usage) is dict:
                    self._note_usage(usage)
            out.append(self._chunk(b'{"role":"assistant","content":""}'))
        elif kind == "message_delta":
            delta = event.get("delta")
            if type(delta) is dict and type(delta.get("stop_reason")) is str:
                self.finish_reason = finish_reason(delta["stop_reason"])
            usage = event.get("usage")
            if type(usage) is dict:
                self._note_usage(usage)
        elif kind == "message_stop":
            self.finish(out)

    def finish(self, out: list[bytes]) -> None:
        """Append the final chunk (and the usage chunk when the app asked for it)."""
        if self.finished:
            return
        self.finished = True
        if self.finish_reason is None:
            self.finish_reason = "stop"
        out.append(
            self._prefix
            + b'{"index":0,"delta":{},"logprobs":null,"finish_reason":"%b"}]}'
            % self.finish_reason.encode()
        )
        usage = self.usage
        if self._include_usage and usage is not None:
            out.append(self._prefix + b'],"usage":' + orjson.dumps(usage) + b"}")

    def _chunk(self, delta: bytes) -> bytes:
        return (
            self._prefix
            + b'{"index":0,"delta":'
            + delta
            + b',"logprobs":null,"finish_reason":null}]}'
        )

    def _note_usage(self, usage: dict[str, Any]) -> None:
        for field in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            value = usage.get(field)
            if type(value) is int:
                self._input_usage[field] = value
        output = usage.get("output_tokens")
        if type(output) is int:
            # Anthropic reports output tokens cumulatively, not per event.
            self._output_tokens = output


def _chunk_prefix(message_id: str, model: str, created: int) -> bytes:
    """Everything of a chunk before its choices, the same for every chunk of one answer."""
    return b'{"id":%b,"object":"chat.completion.chunk","created":%d,"model":%b,"choices":[' % (
        orjson.dumps(message_id),
        created,
        orjson.dumps(model),
    )


def mid_stream_error(provider: str, payload: bytes) -> ByoError:
    """The error for an `event: error` after the answer started (e.g. Anthropic overloaded)."""
    message, _, _ = upstream_message(payload)
    suffix = f": {message}" if message else "."
    try:
        kind = orjson.loads(payload)["error"]["type"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        kind = None
    if kind == "overloaded_error":
        return ByoError(
            502,
            "upstream_overloaded",
            f"The {provider} provider became overloaded in the middle of the answer{suffix}",
        )
    return ByoError(
        502,
        "upstream_error",
        f"The {provider} provider reported an error in the middle of the answer{suffix}",
    )


# --- the provider --------------------------------------------------------------------------


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
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
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
        data = orjson.dumps(to_messages_request(body, model))
        headers = self._headers(credential, stream)
        created = int(time.time())
        started = False
        try:
            async with asyncio.timeout_at(deadline):
                response, answer = await post_chat(
                    self._session, url, data, headers, stream=stream, on_status=self._status_error
                )
            if not stream:
                completion = orjson.dumps(to_chat_completion(self._message(answer), model, created))
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
            )
            try:
                await self._relay(response, reply, translator)
            except BaseException:
                # Not released to the pool: closing is what tells the upstream to stop.
                response.close()
                raise
            response.release()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise transport_error(
                exc, self.name, started=started, timeouts=self._timeouts
            ) from None

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
        self, response: aiohttp.ClientResponse, reply: ChatReply, translator: StreamTranslator
    ) -> None:
        """Translate every complete SSE event as it arrives; end with `done` or raise."""
        content = response.content
        pending = b""
        while True:
            data = await content.readany()
            if not data:
                break
            if pending:
                data = pending + data
            if b"\r" in data:
                data = data.replace(b"\r\n", b"\n")
            end = data.rfind(b"\n\n")
            if end < 0:
                if len(data) > MAX_EVENT_BYTES:
                    raise self._broken("sent an oversized stream event")
                pending = data
                continue
            pending = data[end + 2 :]
            await self._translate_block(data[:end], translator, reply)
            if translator.finished:
                await reply.done(translator.finish_reason, translator.usage)
                return
        if pending.strip():
            await self._translate_block(pending, translator, reply)
        if not translator.finished:
            if translator.finish_reason is None:
                # No message_delta with a stop reason: the answer was cut short.
                raise self._broken("broke off the answer before it was complete")
            # A stop reason came but message_stop did not: the answer itself is whole.
            last: list[bytes] = []
            translator.finish(last)
            await reply.chunk(b"\n".join(last))
        await reply.done(translator.finish_reason, translator.usage)

    async def _translate_block(
        self, block: bytes, translator: StreamTranslator, reply: ChatReply
    ) -> None:
        """Translate the events of `block`, send their chunks, then raise any error among them."""
        lines: list[bytes] = []
        failure: ByoError | None = None
        for line in block.split(b"\n"):
            # event: lines repeat the data's "type"; comments and the rest carry no answer.
            if not line.startswith(b"data:") or translator.finished:
                continue
            payload = line[6:] if line[5:6] == b" " else line[5:]
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
            async with self._session.get(
                url, headers=headers, timeout=_MODELS_TIMEOUT, allow_redirects=False
            ) as response:
                raw = await read_at_most(response, MAX_MODEL_LIST)
                if response.status >= 300:
                    raise self._status_error(response.status, raw, response.headers)
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
            ModelCard(
                id=f"{self.name}/{entry['id']}",
                created=_timestamp(entry.get("created_at")),
                owned_by=self.name,
            )
            for entry in entries
            if type(entry) is dict and type(entry.get("id")) is str
        ]
        last_id = listing.get("last_id")
        more = listing.get("has_more") is True and type(last_id) is str and bool(last_id)
        return cards, last_id if more else None


def _timestamp(created_at: Any) -> int:
    """Unix seconds from Anthropic's RFC 3339 `created_at`; 0 when absent or unreadable."""
    if type(created_at) is not str:
        return 0
    try:
        return int(datetime.fromisoformat(created_at).timestamp())
    except ValueError:
        return 0
