"""Anthropic answers as OpenAI answers: a whole message, or a stream event by event.

`to_chat_completion` translates a non-streamed answer and `StreamTranslator` a streamed one: each
upstream SSE event is parsed once with orjson (by the provider), and each outgoing
`chat.completion.chunk` is spliced together from bytes, never built through pydantic.
"""

from __future__ import annotations

import secrets
from typing import Any, Final

import orjson

from byorouter_common.errors import ByoError
from byorouter_router.providers.errors import upstream_message

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


def _count(value: Any) -> int:
    return value if type(value) is int else 0


def to_openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """OpenAI usage from Anthropic's: cache reads and writes are prompt tokens too, as in OpenAI.

    OpenAI has no field for cache writes; they go in `prompt_tokens_details.cache_write_tokens`,
    OpenRouter's name for them, so usage is recorded the same way from both.
    """
    cache_read = _count(usage.get("cache_read_input_tokens"))
    cache_write = _count(usage.get("cache_creation_input_tokens"))
    prompt = _count(usage.get("input_tokens")) + cache_read + cache_write
    completion = _count(usage.get("output_tokens"))
    translated: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    details: dict[str, int] = {}
    if cache_read:
        details["cached_tokens"] = cache_read
    if cache_write:
        details["cache_write_tokens"] = cache_write
    if details:
        translated["prompt_tokens_details"] = details
    return translated


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if type(stop_reason) is str else "stop"


def to_chat_completion(
    message: dict[str, Any], model: str, created: int, *, json_tool: str | None = None
) -> dict[str, Any]:
    """The OpenAI `chat.completion` for a non-streamed Anthropic message.

    Thinking comes back as `reasoning_content`; a call of `json_tool` (the tool a JSON
    `response_format` was forced through) comes back as the content, its input as a JSON string.
    """
    texts: list[str] = []
    thoughts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    answered_as_json = False
    content = message.get("content")
    for block in content if type(content) is list else ():
        if type(block) is not dict:
            continue
        kind = block.get("type")
        if kind == "text" and type(block.get("text")) is str:
            texts.append(block["text"])
        elif kind == "thinking" and type(block.get("thinking")) is str:
            thoughts.append(block["thinking"])
        elif kind == "tool_use" and json_tool is not None and block.get("name") == json_tool:
            # The model's words around the forced call are not part of the JSON answer.
            texts = [orjson.dumps(block.get("input") or {}).decode()]
            answered_as_json = True
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
        # Redacted thinking and server-tool blocks have no OpenAI counterpart and are left out.
    answer: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if thoughts:
        answer["reasoning_content"] = "".join(thoughts)
    if tool_calls:
        answer["tool_calls"] = tool_calls
    stop_reason = message.get("stop_reason")
    if answered_as_json and stop_reason == "tool_use":
        stop_reason = "end_turn"
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
                "finish_reason": finish_reason(stop_reason),
            }
        ],
        "usage": to_openai_usage(usage if type(usage) is dict else {}),
    }


class StreamTranslator:
    """Turns Anthropic stream events into OpenAI `chat.completion.chunk` JSON, one per line.

    Each tool_use content block gets the next OpenAI tool_calls index (0, 1, ...) and its
    input_json_delta fragments are sent under that index, so parallel calls never collide.
    Thinking deltas go out as `reasoning_content`; the input of a call of `json_tool` (a JSON
    `response_format`) goes out as `content`, fragment by fragment.
    """

    __slots__ = (
        "_argless",
        "_created",
        "_include_usage",
        "_input_usage",
        "_json_blocks",
        "_json_tool",
        "_output_tokens",
        "_prefix",
        "_tool_indexes",
        "finish_reason",
        "finished",
    )

    def __init__(
        self, model: str, created: int, *, include_usage: bool, json_tool: str | None = None
    ) -> None:
        self._include_usage = include_usage
        self._json_tool = json_tool
        # Content block index -> whether any of its JSON was sent yet.
        self._json_blocks: dict[int, bool] = {}
        self._input_usage: dict[str, Any] = {}
        self._output_tokens = 0
        # Content block index -> OpenAI tool_calls index.
        self._tool_indexes: dict[int, int] = {}
        # Tool blocks given no argument yet: OpenAI clients parse "" as bad JSON, so their
        # block's end sends "{}", what the non-streamed answer says for the same call.
        self._argless: set[int] = set()
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
        (ping, thinking) add nothing."""
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta")
            if type(delta) is not dict:
                return
            delta_kind = delta.get("type")
            if delta_kind == "text_delta":
                text = delta.get("text")
                if type(text) is str and text and not self._json_blocks:
                    out.append(self._chunk(b'{"content":' + orjson.dumps(text) + b"}"))
            elif delta_kind == "thinking_delta":
                thought = delta.get("thinking")
                if type(thought) is str and thought:
                    out.append(self._chunk(b'{"reasoning_content":' + orjson.dumps(thought) + b"}"))
            elif delta_kind == "input_json_delta" and event.get("index") in self._json_blocks:
                fragment = delta.get("partial_json")
                if type(fragment) is str and fragment:
                    self._json_blocks[event["index"]] = True
                    out.append(self._chunk(b'{"content":' + orjson.dumps(fragment) + b"}"))
            elif delta_kind == "input_json_delta":
                block_index = event.get("index")
                index = self._tool_indexes.get(block_index) if type(block_index) is int else None
                fragment = delta.get("partial_json")
                if index is not None and type(fragment) is str and fragment:
                    self._argless.discard(block_index)
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
            if (
                block_kind == "tool_use"
                and self._json_tool is not None
                and block.get("name") == self._json_tool
                and type(event.get("index")) is int
            ):
                tool_input = block.get("input")
                self._json_blocks[event["index"]] = bool(tool_input)
                if tool_input:
                    out.append(
                        self._chunk(
                            b'{"content":' + orjson.dumps(orjson.dumps(tool_input).decode()) + b"}"
                        )
                    )
            elif block_kind == "tool_use":
                block_index = event.get("index")
                if type(block_index) is not int:
                    return
                index = len(self._tool_indexes)
                self._tool_indexes[block_index] = index
                tool_input = block.get("input")
                arguments = orjson.dumps(tool_input).decode() if tool_input else ""
                if not arguments:
                    self._argless.add(block_index)
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
        elif kind == "content_block_stop":
            block_index = event.get("index")
            if type(block_index) is int and self._json_blocks.get(block_index) is False:
                # A forced call with no input at all still answers with JSON.
                self._json_blocks[block_index] = True
                out.append(self._chunk(b'{"content":"{}"}'))
            elif block_index in self._argless:
                self._argless.discard(block_index)
                out.append(
                    self._chunk(
                        b'{"tool_calls":[{"index":%d,"function":{"arguments":"{}"}}]}'
                        % self._tool_indexes[block_index]
                    )
                )
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
                reason = delta["stop_reason"]
                # The forced call is how the answer was given, not a call for the app to make.
                if reason == "tool_use" and self._json_blocks:
                    reason = "end_turn"
                self.finish_reason = finish_reason(reason)
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
