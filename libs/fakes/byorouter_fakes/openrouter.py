"""A fake OpenRouter, speaking its real wire format: the fake OpenAI with OpenRouter's differences.

OpenRouter serves the OpenAI Chat Completions API under /api/v1. What this fake does the way
OpenRouter does, and the fake OpenAI does not:

- error bodies are `{"error": {"code": <status as a number>, "message", "metadata"?}}`; fail-402
  is "insufficient credits", fail-403 a moderation refusal whose metadata lists `reasons`;
- every stream opens with the `: OPENROUTER PROCESSING` keep-alive comment, and usage comes in the
  last chunk whether or not it was asked for;
- an error in the middle of a stream is a chunk with an `error` object and `finish_reason:
  "error"` (error-after-<n>);
- GET /api/v1/models lists models as `{"data": [{"id", "canonical_slug", "name", "created",
  "context_length", "pricing", ...}]}`, ids being "<vendor>/<model>".

Faults are chosen by the model name's last part as in `byorouter_fakes.openai` (e.g. model
`fake/fail-429`), and requests are recorded the same way. In-process: `FakeOpenRouter`; as a
server: `python -m byorouter_fakes.openrouter --port 8091`.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Final

import orjson
from aiohttp import web

from byorouter_fakes.base import DEFAULT_STREAM_CHUNKS
from byorouter_fakes.openai import FakeOpenAI
from byorouter_fakes.runner import run_fake

MODELS: Final = (
    ("meta-llama/llama-3.1-8b-instruct", "Meta: Llama 3.1 8B Instruct", 131072),
    ("anthropic/claude-3.5-sonnet", "Anthropic: Claude 3.5 Sonnet", 200000),
    ("openai/gpt-4o-mini", "OpenAI: GPT-4o-mini", 128000),
    ("deepseek/deepseek-r1", "DeepSeek: R1", 163840),
)
# The provider OpenRouter routed a request to, as its chunks name it.
SERVED_BY: Final = "FakeInfra"
_JSON: Final = "application/json"

_MESSAGES: Final = {
    400: "Invalid request: the fake upstream was asked to refuse this request.",
    401: "No auth credentials found",
    402: "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
    403: "Your chosen model requires moderation and your input was flagged",
    408: "Request timed out",
    429: "Rate limit exceeded: free-models-per-min.",
    502: "Provider returned error",
    503: "No allowed providers are available for the selected model.",
}


def openrouter_error(status: int, metadata: dict[str, Any] | None = None) -> bytes:
    message = _MESSAGES.get(status, "Internal Server Error")
    error: dict[str, Any] = {"code": status, "message": message}
    if metadata is not None:
        error["metadata"] = metadata
    return orjson.dumps({"error": error})


class FakeOpenRouter(FakeOpenAI):
    """The fake server; `await start(host, port)` in-process, `await stop()` when done."""

    api_prefix: ClassVar[str] = "/api/v1"
    stream_preamble: ClassVar[bytes] = b": OPENROUTER PROCESSING\n\n"

    def model_list(self) -> dict[str, Any]:
        return {
            "data": [
                {
                    "id": model_id,
                    "canonical_slug": model_id,
                    "name": name,
                    "created": 1721260800,
                    "description": f"{name}, as listed by the fake OpenRouter.",
                    "context_length": context,
                    "architecture": {
                        "modality": "text->text",
                        "input_modalities": ["text"],
                        "output_modalities": ["text"],
                        "tokenizer": "Other",
                    },
                    "pricing": {"prompt": "0.00000002", "completion": "0.00000005"},
                    "top_provider": {"context_length": context, "is_moderated": False},
                    "per_request_limits": None,
                    "supported_parameters": ["max_tokens", "temperature", "tools", "stream"],
                }
                for model_id, name, context in MODELS
            ]
        }

    def error_response(self, status: int, model: str, *, retry_after: bool) -> web.Response:
        metadata: dict[str, Any] | None = None
        if status == 403:
            metadata = {
                "reasons": ["harassment"],
                "flagged_input": "the flagged part of the user's input",
                "provider_name": SERVED_BY,
                "model_slug": model,
            }
        elif status == 502:
            metadata = {"provider_name": SERVED_BY, "raw": "upstream said no"}
        headers = {"retry-after": "1"} if status in (429, 503) and retry_after else {}
        return web.Response(
            status=status,
            body=openrouter_error(status, metadata),
            content_type=_JSON,
            headers=headers,
        )

    def stream_error_event(self, head: bytes) -> bytes:
        # `head` ends inside the chunk's "choices":[ ... so the error is spliced in before it.
        opening, _, _ = head.rpartition(b',"choices":[')
        return (
            opening
            + b',"provider":"'
            + SERVED_BY.encode()
            + b'","error":{"code":"server_error","message":"Provider disconnected unexpectedly"}'
            + b',"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}\n\n'
        )

    def sends_usage(self, body: dict[str, Any], kind: str) -> bool:
        # OpenRouter reports usage in the last chunk of every stream.
        return kind != "usage-never"


def main(argv: list[str] | None = None) -> None:
    run_fake(
        lambda chunks: FakeOpenRouter(stream_chunks=chunks),
        lambda fake: "fake OpenRouter upstream listening on " + fake.base_url,  # type: ignore[attr-defined]
        prog="python -m byorouter_fakes.openrouter",
        description="A fake OpenRouter upstream.",
        default_port=8092,
        default_chunks=DEFAULT_STREAM_CHUNKS,
        argv=argv,
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
