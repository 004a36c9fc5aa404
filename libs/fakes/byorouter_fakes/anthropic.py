"""A fake Anthropic Messages API server, speaking the real wire format, whose faults tests choose.

One file on purpose: it is one provider's wire format (request checks, answers, the event stream)
read top to bottom, beside its twin in `openai.py`.

Each request picks its own behaviour through its model name (the part after the last "/"), so
tests running in parallel never disturb each other:

    fail-<status>       that HTTP status with Anthropic's error body for it (429 adds
                        retry-after: 1; 529 is overloaded_error)
    slow-<ms>           wait before the response headers, then succeed
    drip-<ms>           a stream that pauses <ms> between events
    hang                never answer
    cached-<n>          success; usage says n input tokens were read from the prompt cache and
                        2n written to it (cache_read_input_tokens, cache_creation_input_tokens)
    cut-after-<n>       stream n events, then drop the connection
    error-after-<n>     stream n events, then an `event: error` (overloaded_error) and the end
    tools-2             two parallel tool_use blocks (the first offered tool, for Paris and for
                        Tokyo), their input streamed as input_json_delta fragments
                        (once given their results, it answers in text like any other model)
    thinking            (`thinking: {type: enabled, budget_tokens}` in the body) a thinking
                        block first, streamed as thinking_delta pieces and a signature_delta
    tool_choice tool    (`{type: tool, name}`) one call of that tool, its input filled from
                        the tool's input_schema (strings echo the user's words), streamed as
                        input_json_delta fragments
    anything else       success: the reply echoes the last user turn's text (or tool results)

Requests are checked the way Anthropic checks them, with its messages: x-api-key and
anthropic-version headers, max_tokens present, no fields Anthropic does not know, no "system"
role inside messages, turns starting with user and alternating, each tool_result answering a
tool_use of the turn before it (and coming first in its turn), and more.

Every request is recorded (headers, body) under a tag, the `x-test-tag` header or else the body's
`metadata.user_id`, and served back at GET /_fake/requests?tag=...; GET /_fake/disconnects?tag=...
counts requests whose client went away before the answer was complete. Run it in-process with
`FakeAnthropic` or as a server: `python -m byorouter_fakes.anthropic --host 127.0.0.1 --port 8091`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from typing import Any, Final

import orjson
from aiohttp import web

from byorouter_fakes.base import (
    DEFAULT_MAX_RECORDED,
    DEFAULT_STREAM_CHUNKS,
    JSON,
    SSE_HEADERS,
    FakeUpstream,
)
from byorouter_fakes.runner import run_fake

MODELS: Final = (
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
    ("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z"),
)
TOOL_CITIES: Final = ("Paris", "Tokyo")

_JSON: Final = JSON
_BEHAVIOUR = re.compile(r"^(fail|slow|drip|cut-after|error-after|cached)-(\d+)$|^(hang|tools-2)$")
_WORD = re.compile(r"\S+\s*")
_FIELDS: Final = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
        "service_tier",
    }
)
_MEDIA_TYPES: Final = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_ERROR_MESSAGES: Final = {
    400: "messages: the fake upstream was asked to refuse this request",
    # The real message names no key; neither does the fake, so no test can leak one.
    401: "invalid x-api-key",
    402: "Your credit balance is too low to access the Anthropic API.",
    403: "Your API key does not have permission to use the specified resource.",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: "This request would exceed the rate limit for your organization of 50 requests per "
    "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.",
    500: "Internal server error",
    529: "Overloaded",
}


class Invalid(Exception):
    """A request Anthropic would refuse with 400 invalid_request_error and this message."""


def error_body(type_: str, message: str) -> bytes:
    return orjson.dumps(
        {
            "type": "error",
            "error": {"type": type_, "message": message},
            "request_id": "req_" + secrets.token_hex(12),
        }
    )


def _error(
    status: int, type_: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=error_body(type_, message), content_type=_JSON, headers=headers
    )


def _anthropic_error(status: int, model: str) -> web.Response:
    """The error Anthropic answers with for `status`, with its usual type and message."""
    headers: dict[str, str] = {}
    if status == 429:
        headers = {
            "retry-after": "1",
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
        }
    if status == 404:
        message = f"model: {model}"
    else:
        message = _ERROR_MESSAGES.get(status, "Internal server error")
    type_ = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return _error(status, type_, message, headers)


# --- what Anthropic checks --------------------------------------------------------------------


def validate(body: dict[str, Any]) -> None:
    """Raise `Invalid` with Anthropic's message for a request it would refuse."""
    for field in body:
        if field not in _FIELDS:
            raise Invalid(f"{field}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Invalid("model: Field required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise Invalid("max_tokens: Field required")
    if type(max_tokens) is not int or max_tokens < 1:
        raise Invalid("max_tokens: Input should be a valid integer greater than or equal to 1")
    temperature = body.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 1
    ):
        raise Invalid("temperature: range: 0..1")
    _validate_system(body.get("system"))
    stop = body.get("stop_sequences")
    if stop is not None and not (
        isinstance(stop, list) and all(isinstance(s, str) and s.strip() for s in stop)
    ):
        raise Invalid("stop_sequences: each stop sequence must be a non-empty string")
    tool_names = _validate_tools(body.get("tools"))
    _validate_tool_choice(body.get("tool_choice"), tool_names)
    _validate_thinking(body)
    _validate_messages(body.get("messages"))


def _validate_thinking(body: dict[str, Any]) -> None:
    thinking = body.get("thinking")
    if thinking is None:
        return
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
        raise Invalid("thinking.type: Input should be 'enabled' or 'disabled'")
    if thinking["type"] == "disabled":
        return
    budget = thinking.get("budget_tokens")
    if type(budget) is not int or budget < 1024:
        raise Invalid(
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        )
    if budget >= body["max_tokens"]:
        raise Invalid("`max_tokens` must be greater than `thinking.budget_tokens`")
    if body.get("temperature") not in (None, 1):
        raise Invalid("`temperature` may only be set to 1 when thinking is enabled")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise Invalid("Thinking may not be enabled when tool_choice forces tool use.")


def _validate_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise Invalid("system: Input should be a valid string or list")
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise Invalid(f"system.{i}.type: Input should be 'text'")
        if not isinstance(block.get("text"), str) or not block["text"]:
            raise Invalid("system: text content blocks must be non-empty")


def _validate_tools(tools: Any) -> set[str]:
    if tools is None:
        return set()
    if not isinstance(tools, list):
        raise Invalid("tools: Input should be a valid list")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise Invalid(f"tools.{i}.name: Field required")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise Invalid(f"tools.{i}.input_schema: Field required")
        if schema.get("type") != "object":
            raise Invalid(f"tools.{i}.input_schema.type: Input should be 'object'")
        for field in tool:
            if field not in ("name", "description", "input_schema", "cache_control", "type"):
                raise Invalid(f"tools.{i}.{field}: Extra inputs are not permitted")
        names.add(tool["name"])
    return names


def _validate_tool_choice(choice: Any, tool_names: set[str]) -> None:
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise Invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    if kind == "tool" and choice.get("name") not in tool_names:
        raise Invalid("tool_choice.name: the named tool is not among the tools provided")
    if not tool_names and kind != "none":
        raise Invalid("tool_choice: may only be specified while providing tools")


def _validate_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise Invalid("messages: Field required")
    if not messages:
        raise Invalid("messages: at least one message is required")
    previous_role: str | None = None
    previous_tool_uses: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise Invalid(f"messages.{i}: Input should be a valid dictionary")
        role = message.get("role")
        if role == "system":
            raise Invalid(
                'messages: Unexpected role "system". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise Invalid('messages: first message must use the "user" role')
        if role == previous_role:
            raise Invalid(
                'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        answered, tool_uses = _validate_content(i, role, message.get("content"), previous_tool_uses)
        missing = previous_tool_uses - answered
        if missing:
            raise Invalid(
                f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(sorted(missing))}. Each `tool_use` block must "
                "have a corresponding `tool_result` block in the next message."
            )
        previous_role, previous_tool_uses = role, tool_uses


def _validate_content(
    i: int, role: str, content: Any, previous_tool_uses: set[str]
) -> tuple[set[str], set[str]]:
    """(tool_use ids this turn answers, tool_use ids this turn makes) for one message."""
    if isinstance(content, str):
        if not content and role == "user":
            raise Invalid(f"messages.{i}: user messages must have non-empty content")
        return set(), set()
    if not isinstance(content, list):
        raise Invalid(f"messages.{i}.content: Input should be a valid string or list")
    if not content and role == "user":
        raise Invalid(f"messages.{i}: all messages must have non-empty content")
    answered: set[str] = set()
    uses: set[str] = set()
    seen_other = False
    for j, block in enumerate(content):
        where = f"messages.{i}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str) or not block["text"]:
                raise Invalid("messages: text content blocks must be non-empty")
            seen_other = True
        elif kind == "image":
            _validate_image(where, block.get("source"))
            seen_other = True
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise Invalid(f"{where}.id: Field required")
            if not isinstance(block.get("input"), dict):
                raise Invalid(f"{where}.input: Input should be a valid dictionary")
            uses.add(block["id"])
        elif kind == "tool_result" and role == "user":
            tool_use_id = block.get("tool_use_id")
            if tool_use_id not in previous_tool_uses:
                raise Invalid(
                    f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{tool_use_id}. Each `tool_result` block must have a corresponding "
                    "`tool_use` block in the previous message."
                )
            if seen_other:
                raise Invalid(
                    f"{where}: tool_result blocks must come first in the message content, "
                    "before any other content"
                )
            answered.add(tool_use_id)
        else:
            raise Invalid(f"{where}.type: this block type is not allowed in a {role} message")
    return answered, uses


def _validate_image(where: str, source: Any) -> None:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        if source.get("media_type") not in _MEDIA_TYPES:
            raise Invalid(
                f"{where}.source.media_type: Input should be 'image/jpeg', 'image/png', "
                "'image/gif' or 'image/webp'"
            )
        if not isinstance(source.get("data"), str) or not source["data"]:
            raise Invalid(f"{where}.source.data: Field required")
    elif kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise Invalid(f"{where}.source.url: must be an http(s) URL")
    else:
        raise Invalid(f"{where}.source.type: Input should be 'base64' or 'url'")


# --- what the fake answers ------------------------------------------------------------------


def _text_of(content: Any) -> str:
    """A turn's text: its string, or its text blocks and tool result contents, space-joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_result":
            texts.append(_text_of(block.get("content")))
    return " ".join(t for t in texts if t)


def _reply_words(body: dict[str, Any]) -> tuple[list[str], int]:
    """The words of the reply (an echo of the last user turn) and the prompt's word count."""
    prompt_words = len(_text_of(body.get("system")).split())
    last_user = ""
    for message in body["messages"]:
        text = _text_of(message.get("content"))
        prompt_words += len(text.split())
        if message.get("role") == "user":
            last_user = text
    words = _WORD.findall(last_user.strip()) or ["Hello ", "from ", "the ", "fake ", "Claude."]
    return words, prompt_words


def _split(words: list[str], parts: int) -> list[str]:
    """`words` joined into at most `parts` pieces of near-equal size, in order."""
    count = max(1, min(parts, len(words)))
    return [
        "".join(words[i * len(words) // count : (i + 1) * len(words) // count])
        for i in range(count)
    ]


def _answers_tools(message: dict[str, Any]) -> bool:
    """Whether a turn carries tool results (then a tool-calling model answers in text)."""
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(block, dict) and block.get("type") == "tool_result" for block in content
    )


def _event(data: dict[str, Any]) -> bytes:
    kind: str = data["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class Answer:
    """One answer's content blocks, stop reason and usage, as a message or as stream events."""

    def __init__(self, body: dict[str, Any], model: str, behaviour: str, arg: int = 0) -> None:
        self.model = model
        self.cache_read = arg if behaviour == "cached" else 0
        self.cache_write = 2 * self.cache_read
        self.id = "msg_" + secrets.token_hex(12)
        words, self.input_tokens = _reply_words(body)
        self.stop_reason = "end_turn"
        self.stop_sequence: str | None = None
        # (block, streamed pieces): text pieces for text blocks, JSON fragments for tool_use.
        self.blocks: list[tuple[dict[str, Any], list[str]]] = []
        thinking = body.get("thinking")
        # The thinking block that comes before the answer, and its streamed pieces.
        self.thinking: tuple[dict[str, Any], list[str]] | None = None
        if isinstance(thinking, dict) and thinking.get("type") == "enabled":
            pieces = ["Let me think. ", "The user said ", f"{len(words)} words."]
            signature = "sig_" + secrets.token_hex(16)
            self.thinking = (
                {"type": "thinking", "thinking": "".join(pieces), "signature": signature},
                pieces,
            )
        if behaviour == "tools-2" and not _answers_tools(body["messages"][-1]):
            self._tool_calls(body)
            return
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "tool":
            self._forced_call(body, choice["name"], "".join(words).strip())
            return
        limit: int = body["max_tokens"]
        if len(words) > limit:
            words, self.stop_reason = words[:limit], "max_tokens"
        text = "".join(words)
        cut = len(text)
        for sequence in body.get("stop_sequences") or ():
            at = text.find(sequence)
            if 0 <= at < cut:
                cut, self.stop_reason, self.stop_sequence = at, "stop_sequence", sequence
        if cut < len(text):
            words = _WORD.findall(text[:cut]) or [text[:cut]]
        self.output_tokens = len(words)
        self.words = words

    def _tool_calls(self, body: dict[str, Any]) -> None:
        tools = body.get("tools") or [{"name": "get_weather"}]
        name = tools[0]["name"]
        preface = "I'll check the weather in both cities."
        self.blocks.append(({"type": "text", "text": preface}, [preface]))
        for city in TOOL_CITIES:
            arguments = orjson.dumps({"city": city}).decode()
            # Split mid-token like the real API: '{"city": "Pa', 'ris"}' arrive separately.
            middle = len(arguments) - 4
            self.blocks.append(
                (
                    {
                        "type": "tool_use",
                        "id": "toolu_" + secrets.token_hex(12),
                        "name": name,
                        "input": {"city": city},
                    },
                    ["", arguments[:9], arguments[9:middle], arguments[middle:]],
                )
            )
        self.stop_reason = "tool_use"
        self.output_tokens = 40
        self.words = []

    def _forced_call(self, body: dict[str, Any], name: str, said: str) -> None:
        """The one call `tool_choice: {type: tool}` forces, its input made to fit the schema."""
        schema = next(t["input_schema"] for t in body["tools"] if t["name"] == name)
        arguments = orjson.dumps(_sample(schema, said)).decode()
        middle = len(arguments) // 2
        self.blocks.append(
            (
                {
                    "type": "tool_use",
                    "id": "toolu_" + secrets.token_hex(12),
                    "name": name,
                    "input": orjson.loads(arguments),
                },
                ["", arguments[:middle], arguments[middle:]],
            )
        )
        self.stop_reason = "tool_use"
        self.output_tokens = 20
        self.words = []

    def message(self) -> bytes:
        content = [block for block, _ in self.blocks] or [
            {"type": "text", "text": "".join(self.words)}
        ]
        if self.thinking is not None:
            content.insert(0, self.thinking[0])
        return orjson.dumps(
            {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": content,
                "stop_reason": self.stop_reason,
                "stop_sequence": self.stop_sequence,
                "usage": {
                    "input_tokens": self.input_tokens,
                    "cache_creation_input_tokens": self.cache_write,
                    "cache_read_input_tokens": self.cache_read,
                    "output_tokens": self.output_tokens,
                },
            }
        )

    def events(self, chunks: int) -> list[bytes]:
        """Every SSE event of the streamed answer, message_stop last, each framed and encoded."""
        events = [
            _event(
                {
                    "type": "message_start",
                    "message": {
                        "id": self.id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {
                            "input_tokens": self.input_tokens,
                            "cache_creation_input_tokens": self.cache_write,
                            "cache_read_input_tokens": self.cache_read,
                            "output_tokens": 1,
                        },
                    },
                }
            ),
            _event({"type": "ping"}),
        ]
        blocks = self.blocks or [({"type": "text", "text": ""}, _split(self.words, chunks))]
        if self.thinking is not None:
            blocks = [self.thinking, *blocks]
        for index, (block, pieces) in enumerate(blocks):
            start: dict[str, Any]
            if block["type"] == "text":
                start = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": piece} for piece in pieces]
            elif block["type"] == "thinking":
                start = {"type": "thinking", "thinking": ""}
                deltas = [{"type": "thinking_delta", "thinking": piece} for piece in pieces]
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
            else:
                start = {**block, "input": {}}
                deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
            events.append(
                _event({"type": "content_block_start", "index": index, "content_block": start})
            )
            events += [
                _event({"type": "content_block_delta", "index": index, "delta": delta})
                for delta in deltas
            ]
            events.append(_event({"type": "content_block_stop", "index": index}))
        events.append(
            _event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                    "usage": {"output_tokens": self.output_tokens},
                }
            )
        )
        events.append(_event({"type": "message_stop"}))
        return events


def _sample(schema: Any, said: str) -> Any:
    """A value that fits a (simple) JSON schema: what a model forced to call a tool fills in."""
    if not isinstance(schema, dict):
        return said
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {key: _sample(value, said) for key, value in properties.items()}
    if kind == "array":
        return [_sample(schema.get("items"), said)]
    if kind == "integer":
        return len(said.split())
    if kind == "number":
        return len(said.split()) / 2
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return said


class FakeAnthropic(FakeUpstream):
    """The fake server; `await start(host, port)` in-process, `await stop()` when done."""

    client_max_size = 32 * 2**20

    def __init__(
        self,
        *,
        stream_chunks: int = DEFAULT_STREAM_CHUNKS,
        max_recorded: int = DEFAULT_MAX_RECORDED,
    ) -> None:
        super().__init__(stream_chunks=stream_chunks, max_recorded=max_recorded)
        self._models_body = orjson.dumps(
            {
                "data": [
                    {"type": "model", "id": i, "display_name": name, "created_at": created}
                    for i, name, created in MODELS
                ],
                "has_more": False,
                "first_id": MODELS[0][0],
                "last_id": MODELS[-1][0],
            }
        )

    def api_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_get("/v1/models", self.list_models)

    # A provider credential's `base_url` is the fake's root (`url`), as Anthropic's own SDK is
    # pointed: the API paths start with /v1.

    # --- the Anthropic API ----------------------------------------------------------------

    @staticmethod
    def _refuse_headers(request: web.Request) -> web.Response | None:
        """Anthropic's answer to a request without its key or version header, else None."""
        if not request.headers.get("x-api-key"):
            return _error(401, "authentication_error", "x-api-key header is required")
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        return None

    async def list_models(self, request: web.Request) -> web.Response:
        self._record(request, None, request.headers.get("x-test-tag", ""))
        refused = self._refuse_headers(request)
        if refused is not None:
            return refused
        return web.Response(body=self._models_body, content_type=_JSON)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        metadata = body.get("metadata") if isinstance(body, dict) else None
        user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
        tag = request.headers.get("x-test-tag") or (user_id if isinstance(user_id, str) else "")
        self._record(request, body, tag)
        refused = self._refuse_headers(request)
        if refused is not None:
            return refused
        if not isinstance(body, dict):
            return _error(400, "invalid_request_error", "The request body is not valid JSON.")
        try:
            validate(body)
        except Invalid as exc:
            return _error(400, "invalid_request_error", str(exc))
        try:
            return await self._answer(request, body, body["model"])
        except (asyncio.CancelledError, ConnectionResetError):
            self._disconnects[tag] += 1
            raise

    async def _answer(
        self, request: web.Request, body: dict[str, Any], model: str
    ) -> web.StreamResponse:
        match = _BEHAVIOUR.match(model.rsplit("/", 1)[-1])
        kind, arg = (
            (match.group(1) or match.group(3), int(match.group(2) or 0)) if match else ("", 0)
        )
        if kind == "fail":
            return _anthropic_error(arg, model)
        if kind == "hang":
            await self._park()
        if kind == "slow":
            await asyncio.sleep(arg / 1000)
        answer = Answer(body, model, kind, arg)
        if body.get("stream") is True:
            return await self._stream(request, answer, kind, arg)
        return web.Response(
            body=answer.message(),
            content_type=_JSON,
            headers={"request-id": "req_" + secrets.token_hex(12)},
        )

    async def _stream(
        self, request: web.Request, answer: Answer, kind: str, arg: int
    ) -> web.StreamResponse:
        events = answer.events(self.stream_chunks)
        response = web.StreamResponse(headers=SSE_HEADERS)
        response.headers["request-id"] = "req_" + secrets.token_hex(12)
        await response.prepare(request)
        if kind == "drip":
            for event in events:
                await response.write(event)
                await asyncio.sleep(arg / 1000)
            await response.write_eof()
            return response
        if kind in ("cut-after", "error-after"):
            await response.write(b"".join(events[:arg]))
            if kind == "cut-after":
                # Drop the TCP connection without the chunked terminator: a cut, not an end.
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write(
                b"event: error\ndata: " + error_body("overloaded_error", "Overloaded") + b"\n\n"
            )
            await response.write_eof()
            return response
        # The fast path: the whole answer in one write, as a quick upstream delivers it.
        await response.write_eof(b"".join(events))
        return response


def main(argv: list[str] | None = None) -> None:
    run_fake(
        lambda chunks: FakeAnthropic(stream_chunks=chunks),
        lambda fake: "fake Anthropic upstream listening on " + fake.url,  # type: ignore[attr-defined]
        prog="python -m byorouter_fakes.anthropic",
        description="A fake Anthropic Messages API upstream.",
        default_port=8091,
        default_chunks=DEFAULT_STREAM_CHUNKS,
        argv=argv,
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
