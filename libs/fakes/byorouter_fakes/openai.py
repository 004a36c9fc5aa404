"""A fake OpenAI Chat Completions server, speaking the real wire format, whose faults tests choose.

Each request picks its own behaviour through its model name (the part after the last "/"), so
tests running in parallel never disturb each other:

    fail-<status>       that HTTP status with OpenAI's error body for it (429 adds retry-after: 1)
    busy-<status>       the same without retry-after, so a retrying client waits only its backoff
    flat-<status>       that status with a flat {"error": "text"} body, as some self-hosted servers
    slow-<ms>           wait before the response headers, then succeed
    drip-<ms>           a stream that pauses <ms> between events
    hang                never answer
    cut-after-<n>       stream n events, then drop the connection
    stall-after-<n>     stream n events, then go silent without closing (0: stall before the
                        first token)
    comments-<ms>       a stream that sends only `: keep-alive` comments, one every <ms>, and
                        never a token: alive to a socket's read timeout, silent to a client
    error-after-<n>     stream n events, then an in-stream {"error": ...} event and the end
    garbage-after-<n>   stream n events, then a data line that is not JSON
    reasoning-<n>       n pieces of reasoning as `reasoning` (Ollama's and OpenRouter's field),
                        before the answer; non-streamed, the message's `reasoning`; usage
                        counts them as n reasoning tokens (`completion_tokens_details`)
    cached-<n>          success; usage says n more prompt tokens were read from the prompt
                        cache (`prompt_tokens_details.cached_tokens`)
    usage-always        usage in a final chunk even when the request did not ask (llama.cpp)
    usage-never         no usage in a stream even when the request asked for it
    ollama-host         Ollama bound to localhost behind a tunnel: a bare 403 unless the Host
                        header names localhost
    repeat-<n>          success, echoing the last user message n times (a large answer)
    huge-<mib>          a 200 answer of <mib> MiB (streamed or not; never a complete answer)
    gzip-bomb           a 200 answer of about 1 MB, `Content-Encoding: gzip`, that decodes to
                        1 GiB of zero bytes (streamed or not)
    anything else       success: the reply echoes the last user message

POST /embeddings answers a deterministic unit vector per input (`fail-`/`busy-<status>` models
fail as above); POST /responses (OpenAI's Responses API) echoes the input's last text as a
Response, or with `stream: true` as its `event:`-named event stream (`error-after-<n>`: n events,
then an `error` event).

Every request is recorded (headers, body) under a tag, the `x-test-tag` header or else the body's
`user` field, and served back at GET /_fake/requests?tag=...; GET /_fake/disconnects?tag=... counts
requests whose client went away before the answer was complete. Run it in-process with
`FakeOpenAI` or as a server: `python -m byorouter_fakes.openai --host 127.0.0.1 --port 8090`.

One file on purpose, like `anthropic.py`: one provider's wire format (chat, embeddings, Responses,
models, and the faults tests choose) read top to bottom.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import time
from typing import Any, ClassVar, Final

import orjson
from aiohttp import web

from byorouter_fakes.base import (
    DEFAULT_MAX_RECORDED,
    DEFAULT_STREAM_CHUNKS,
    JSON,
    SSE_HEADERS,
    FakeUpstream,
)
from byorouter_fakes.oversized import oversized_answer
from byorouter_fakes.runner import run_fake

MODELS: Final = ("gpt-4o", "gpt-4o-mini", "gpt-4.1-mini", "o3-mini", "text-embedding-3-small")

_DONE: Final = b"data: [DONE]\n\n"
_JSON: Final = JSON
_BEHAVIOUR = re.compile(
    r"^(fail|busy|flat|slow|drip|comments|cut-after|stall-after|error-after|garbage-after|reasoning"
    r"|repeat|huge|cached)"
    r"-(\d+)$|^(hang|usage-always|usage-never|ollama-host|gzip-bomb)$"
)
_WORD = re.compile(r"\S+\s*")


def _error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def _openai_error(status: int, model: str, *, retry_after: bool = True) -> web.Response:
    """The error OpenAI answers with for `status`, with its usual message, type and code."""
    headers: dict[str, str] = {}
    if status == 400:
        body = _error_body(
            "Invalid 'messages': the fake upstream was asked to refuse this request.",
            "invalid_request_error",
            None,
            "messages",
        )
    elif status == 401:
        # The real message shows a masked key; the fake shows none, so no test can leak one.
        body = _error_body(
            "Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        )
    elif status == 403:
        body = _error_body(
            "You are not allowed to use this model.", "invalid_request_error", "permission_denied"
        )
    elif status == 404:
        body = _error_body(
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        )
    elif status == 429:
        headers = {
            "x-ratelimit-limit-requests": "3",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1s",
        }
        body = _error_body(
            f"Rate limit reached for {model} in organization org-fake on requests per min "
            "(RPM): Limit 3, Used 3, Requested 1. Please try again in 1s.",
            "requests",
            "rate_limit_exceeded",
        )
    elif status == 503:
        body = _error_body(
            "The engine is currently overloaded, please try again later.", "server_error", None
        )
    else:
        body = _error_body(
            "The server had an error while processing your request. Sorry about that!",
            "server_error" if status >= 500 else "invalid_request_error",
            None,
        )
    if status == 429 and retry_after:
        headers["retry-after"] = "1"
    return web.Response(status=status, body=body, content_type=_JSON, headers=headers)


def _text_of(content: Any) -> str:
    """A message's text, whether `content` is a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _reply_words(body: dict[str, Any]) -> tuple[list[str], int]:
    """The words of the reply (an echo of the last user message) and the prompt's word count."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = []
    prompt_words = 0
    last_user = ""
    for message in messages:
        if isinstance(message, dict):
            text = _text_of(message.get("content"))
            prompt_words += len(text.split())
            if message.get("role") == "user":
                last_user = text
    words = _WORD.findall(last_user.strip()) or ["Hello ", "from ", "the ", "fake ", "upstream."]
    return words, prompt_words


def _repeated(body: dict[str, Any], times: int) -> dict[str, Any]:
    """`body` with its last user message said `times` times over."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            text = _text_of(messages[i].get("content"))
            messages[i] = {**messages[i], "content": " ".join([text] * times)}
            break
    return {**body, "messages": messages}


def _limit(body: dict[str, Any]) -> int | None:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _reasoning_pieces(count: int) -> list[str]:
    return [f"thought {i + 1}. " for i in range(count)]


def _usage(prompt_tokens: int, completion_tokens: int, kind: str, arg: int) -> dict[str, Any]:
    """Usage as OpenAI reports it; `reasoning-<n>` and `cached-<n>` add their details."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if kind == "cached":
        usage["prompt_tokens"] += arg
        usage["total_tokens"] += arg
        usage["prompt_tokens_details"] = {"cached_tokens": arg}
    elif kind == "reasoning":
        usage["completion_tokens"] += arg
        usage["total_tokens"] += arg
        usage["completion_tokens_details"] = {"reasoning_tokens": arg}
    return usage


def _split(words: list[str], parts: int) -> list[str]:
    """`words` joined into at most `parts` pieces of near-equal size, in order."""
    count = max(1, min(parts, len(words)))
    return [
        "".join(words[i * len(words) // count : (i + 1) * len(words) // count])
        for i in range(count)
    ]


class FakeOpenAI(FakeUpstream):
    """The fake server; `await start(host, port)` in-process, `await stop()` when done.

    Another OpenAI-compatible provider's fake (OpenRouter) subclasses it and changes only what
    its provider does differently: the API path, the model list, error bodies, stream framing.
    """

    # Where the API lives under the server's root.
    api_prefix: ClassVar[str] = "/v1"
    # Written before the first event of every stream (e.g. an SSE comment a provider sends).
    stream_preamble: ClassVar[bytes] = b""

    def __init__(
        self,
        *,
        stream_chunks: int = DEFAULT_STREAM_CHUNKS,
        max_recorded: int = DEFAULT_MAX_RECORDED,
    ) -> None:
        super().__init__(stream_chunks=stream_chunks, max_recorded=max_recorded)
        self._models_body = orjson.dumps(self.model_list())

    def model_list(self) -> dict[str, Any]:
        """The body of GET <api_prefix>/models."""
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 1715367049, "owned_by": "system"}
                for m in MODELS
            ],
        }

    def api_routes(self, app: web.Application) -> None:
        app.router.add_post(self.api_prefix + "/chat/completions", self.chat_completions)
        app.router.add_get(self.api_prefix + "/models", self.list_models)
        app.router.add_post(self.api_prefix + "/embeddings", self.embeddings)
        app.router.add_post(self.api_prefix + "/responses", self.responses)

    @property
    def base_url(self) -> str:
        """What a provider credential's `base_url` should be to reach this fake."""
        return self.url + self.api_prefix

    # --- the OpenAI API -------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        self._record(request, None, request.headers.get("x-test-tag", ""))
        return web.Response(body=self._models_body, content_type=_JSON)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            self._record(request, None, request.headers.get("x-test-tag", ""))
            return web.Response(
                status=400,
                content_type=_JSON,
                body=_error_body(
                    "We could not parse the JSON body of your request.",
                    "invalid_request_error",
                    None,
                ),
            )
        user = body.get("user")
        tag = request.headers.get("x-test-tag") or (user if isinstance(user, str) else "")
        self._record(request, body, tag)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return web.Response(
                status=400,
                content_type=_JSON,
                body=_error_body(
                    "you must provide a model parameter", "invalid_request_error", None
                ),
            )
        try:
            return await self._answer(request, body, model)
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
        if kind in ("fail", "busy"):
            return self.error_response(arg, model, retry_after=kind == "fail")
        if kind == "ollama-host" and request.url.host != "localhost":
            # Ollama's allowedHostsMiddleware: a bare status, no body.
            return web.Response(status=403)
        if kind == "flat":
            return web.Response(
                status=arg,
                content_type=_JSON,
                body=orjson.dumps({"error": "model runner failed (flat error)"}),
            )
        if kind == "hang":
            await self._park()
        if kind in ("huge", "gzip-bomb"):
            return await oversized_answer(request, body.get("stream") is True, kind, arg)
        if kind == "slow":
            await asyncio.sleep(arg / 1000)
        reasoning = arg if kind == "reasoning" else 0
        if kind == "repeat":
            body = _repeated(body, arg)
        if body.get("stream") is True:
            return await self._stream(request, body, model, kind, arg)
        return web.Response(
            body=self._completion(body, model, reasoning, kind, arg), content_type=_JSON
        )

    def error_response(self, status: int, model: str, *, retry_after: bool) -> web.Response:
        """The provider's error for `status`; `retry_after` whether a 429 carries that header."""
        return _openai_error(status, model, retry_after=retry_after)

    def stream_error_event(self, head: bytes) -> bytes:
        """The event a provider sends when the answer fails midway; `head` opens a chunk."""
        return (
            b"data: "
            + _error_body(
                "The server had an error while processing your request.", "server_error", None
            )
            + b"\n\n"
        )

    def sends_usage(self, body: dict[str, Any], kind: str) -> bool:
        """Whether a stream ends with a usage chunk: when asked, unless a quirk says otherwise."""
        if kind == "usage-always":
            return True
        if kind == "usage-never":
            return False
        options = body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    def _completion(
        self, body: dict[str, Any], model: str, reasoning: int = 0, kind: str = "", arg: int = 0
    ) -> bytes:
        words, prompt_tokens = _reply_words(body)
        limit = _limit(body)
        finish = "stop"
        if limit is not None and len(words) > limit:
            words, finish = words[:limit], "length"
        message: dict[str, Any] = {"role": "assistant", "content": "".join(words), "refusal": None}
        if reasoning:
            message["reasoning"] = "".join(_reasoning_pieces(reasoning))
        return orjson.dumps(
            {
                "id": "chatcmpl-" + secrets.token_hex(12),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": _usage(prompt_tokens, len(words), kind, arg),
                "service_tier": "default",
            }
        )

    def _events(
        self, body: dict[str, Any], model: str, kind: str = "", arg: int = 0
    ) -> tuple[bytes, list[bytes]]:
        """A chunk's opening bytes, and every SSE event of a streamed answer, `[DONE]` last."""
        words, prompt_tokens = _reply_words(body)
        limit = _limit(body)
        finish = b'"stop"'
        if limit is not None and len(words) > limit:
            words, finish = words[:limit], b'"length"'
        include_usage = self.sends_usage(body, kind)
        # A server that always sends usage does not mark the other chunks `"usage":null`.
        null_usage = include_usage and kind != "usage-always"
        # One prefix and suffix per answer; each event only splices in its own delta.
        head = b"".join(
            (
                b'data: {"id":"chatcmpl-',
                secrets.token_hex(12).encode(),
                b'","object":"chat.completion.chunk","created":',
                str(int(time.time())).encode(),
                b',"model":',
                orjson.dumps(model),
                b',"system_fingerprint":"fp_fake","choices":[',
            )
        )
        tail = b'],"usage":null}\n\n' if null_usage else b"]}\n\n"
        events = [
            head + b'{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
            b'"logprobs":null,"finish_reason":null}' + tail
        ]
        if kind == "reasoning":
            events += [
                head
                + b'{"index":0,"delta":{"reasoning":'
                + orjson.dumps(piece)
                + b'},"logprobs":null,"finish_reason":null}'
                + tail
                for piece in _reasoning_pieces(arg)
            ]
        events += [
            head
            + b'{"index":0,"delta":{"content":'
            + orjson.dumps(piece)
            + b'},"logprobs":null,"finish_reason":null}'
            + tail
            for piece in _split(words, self.stream_chunks)
        ]
        events.append(
            head + b'{"index":0,"delta":{},"logprobs":null,"finish_reason":' + finish + b"}" + tail
        )
        if include_usage:
            usage = _usage(prompt_tokens, len(words), kind, arg)
            events.append(head + b'],"usage":' + orjson.dumps(usage) + b"}\n\n")
        events.append(_DONE)
        return head, events

    async def _stream(
        self, request: web.Request, body: dict[str, Any], model: str, kind: str, arg: int
    ) -> web.StreamResponse:
        head, events = self._events(body, model, kind, arg)
        if self.stream_preamble:
            events[0] = self.stream_preamble + events[0]
        response = web.StreamResponse(headers=SSE_HEADERS)
        response.headers["x-request-id"] = "req_" + secrets.token_hex(8)
        await response.prepare(request)
        if kind == "comments":
            while True:
                await response.write(b": keep-alive\n\n")
                await asyncio.sleep(arg / 1000)
        if kind == "drip":
            for event in events:
                await response.write(event)
                await asyncio.sleep(arg / 1000)
            await response.write_eof()
            return response
        if kind in ("cut-after", "stall-after", "error-after", "garbage-after"):
            await response.write(b"".join(events[:arg]))
            if kind == "cut-after":
                # Drop the TCP connection without the chunked terminator: a cut, not an end.
                if request.transport is not None:
                    request.transport.close()
                return response
            if kind == "stall-after":
                await self._park()
            elif kind == "error-after":
                await response.write(self.stream_error_event(head))
            else:
                await response.write(b'data: {"choices": [{"delta": \n\n')
            await response.write_eof()
            return response
        # The fast path: the whole answer in one write, as a quick upstream delivers it.
        await response.write_eof(b"".join(events))
        return response

    # --- embeddings and the Responses API --------------------------------------------------

    async def _json_request(self, request: web.Request) -> tuple[dict[str, Any], str] | None:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            self._record(request, None, request.headers.get("x-test-tag", ""))
            return None
        user = body.get("user")
        tag = request.headers.get("x-test-tag") or (user if isinstance(user, str) else "")
        self._record(request, body, tag)
        return body, tag

    def _refusal(self, body: dict[str, Any] | None) -> web.Response | None:
        """The error a request's model asks for (`fail-`/`busy-<status>`), or a missing model's."""
        model = body.get("model") if body is not None else None
        if not isinstance(model, str) or not model:
            return web.Response(
                status=400,
                content_type=_JSON,
                body=_error_body(
                    "you must provide a model parameter", "invalid_request_error", None
                ),
            )
        match = _BEHAVIOUR.match(model.rsplit("/", 1)[-1])
        if match and match.group(1) in ("fail", "busy"):
            status = int(match.group(2))
            return self.error_response(status, model, retry_after=match.group(1) == "fail")
        return None

    async def embeddings(self, request: web.Request) -> web.Response:
        """POST /embeddings: one deterministic 8-dimension unit vector per input, from its text."""
        parsed = await self._json_request(request)
        body = parsed[0] if parsed else None
        refusal = self._refusal(body)
        if refusal is not None or body is None:
            return refusal or web.Response(status=400)
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not texts:
            return web.Response(
                status=400,
                content_type=_JSON,
                body=_error_body("'input' is required", "invalid_request_error", None, "input"),
            )
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(str(text))}
            for i, text in enumerate(texts)
        ]
        tokens = sum(len(str(text).split()) for text in texts)
        return web.Response(
            content_type=_JSON,
            body=orjson.dumps(
                {
                    "object": "list",
                    "data": data,
                    "model": body["model"],
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            ),
        )

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """POST /responses: the input's last text echoed, as a Response or its event stream."""
        parsed = await self._json_request(request)
        body = parsed[0] if parsed else None
        refusal = self._refusal(body)
        if refusal is not None or body is None:
            return refusal or web.Response(status=400)
        words = _WORD.findall(_responses_input_text(body.get("input")).strip()) or ["Hello."]
        text = "".join(words)
        prompt = len(words)
        response_id = "resp_" + secrets.token_hex(12)
        item_id = "msg_" + secrets.token_hex(12)
        usage = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": len(words),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + len(words),
        }
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {
            "id": item_id,
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }

        def response(status: str, output: list[Any], usage: Any) -> dict[str, Any]:
            return {
                "id": response_id,
                "object": "response",
                "created_at": int(time.time()),
                "status": status,
                "model": body["model"],
                "output": output,
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
                "usage": usage,
            }

        if body.get("stream") is not True:
            return web.Response(
                content_type=_JSON, body=orjson.dumps(response("completed", [item], usage))
            )
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": response("in_progress", [], None)},
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**item, "status": "in_progress", "content": []},
            },
            {
                "type": "response.content_part.added",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "part": {**part, "text": ""},
            },
        ]
        events += [
            {
                "type": "response.output_text.delta",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "delta": piece,
            }
            for piece in _split(words, self.stream_chunks)
        ]
        events += [
            {
                "type": "response.output_text.done",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "text": text,
            },
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed", "response": response("completed", [item], usage)},
        ]
        match = _BEHAVIOUR.match(str(body["model"]).rsplit("/", 1)[-1])
        if match and match.group(1) == "error-after":
            # OpenAI's failure midway: an `error` event, then the end, no response.completed.
            events = events[: int(match.group(2))]
            events.append(
                {"type": "error", "code": "server_error", "message": "The server had an error."}
            )
        stream = web.StreamResponse(headers=SSE_HEADERS)
        await stream.prepare(request)
        await stream.write_eof(
            b"".join(
                b"event: %s\ndata: %s\n\n"
                % (event["type"].encode(), orjson.dumps({**event, "sequence_number": n}))
                for n, event in enumerate(events)
            )
        )
        return stream


def _vector(text: str) -> list[float]:
    """A unit vector that depends only on `text`, so a test can check what came back."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [b - 127.5 for b in digest[:8]]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return [round(x / norm, 6) for x in raw]


def _responses_input_text(value: Any) -> str:
    """The text of a Responses `input`: a string, or the last message's text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for item in reversed(value):
            if isinstance(item, dict):
                content = item.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    return " ".join(
                        part["text"]
                        for part in content
                        if isinstance(part, dict) and isinstance(part.get("text"), str)
                    )
    return ""


def main(argv: list[str] | None = None) -> None:
    run_fake(
        lambda chunks: FakeOpenAI(stream_chunks=chunks),
        lambda fake: "fake OpenAI upstream listening on " + fake.base_url,  # type: ignore[attr-defined]
        prog="python -m byorouter_fakes.openai",
        description="A fake OpenAI Chat Completions upstream.",
        default_port=8090,
        default_chunks=DEFAULT_STREAM_CHUNKS,
        argv=argv,
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
