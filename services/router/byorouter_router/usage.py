"""Token usage: always asked of a streaming upstream, shown to a client only if it asked, reported.

Usage is what the user pays for, so the router always has the upstream send it; a client that
did not ask (`stream_options.include_usage`) gets the answer without it. Every finished request
is reported as a `UsageEvent` (`usage_event`), whoever served it, and so is one whose answer
broke after it started: with the upstream's usage if it came, else with an estimate of what was
delivered (`delivered_deltas`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import orjson

from byorouter_common.contracts.events import UsageEvent
from byorouter_router.credentials import ConnectionCredentials
from byorouter_router.fallback import Candidate

# OpenAI-compatible upstreams put this on every chunk once usage is asked for; compact JSON only
# (a quote inside a JSON string is always escaped, so the bytes cannot occur inside content).
_NULL_USAGE: Final = b',"usage":null'
_USAGE_KEY: Final = b'"usage"'
_REPORTED_USAGE: Final = b'"usage":{'
# A streamed delta with text in it: about one token each from OpenAI-style upstreams (and from
# our Anthropic translation, one per text delta). Compact JSON, as every upstream we relay sends.
_CONTENT_DELTA: Final = b'"content":"'
_EMPTY_CONTENT: Final = b'"content":""'
_REASONING_DELTA: Final = b'"reasoning_content":"'


def wants_usage(body: dict[str, Any]) -> bool:
    """Whether the client asked for usage in its stream."""
    options = body.get("stream_options")
    return type(options) is dict and options.get("include_usage") is True


def ask_for_usage(body: dict[str, Any]) -> None:
    """Make a streamed request ask its upstream for usage, keeping the client's other options."""
    options = body.get("stream_options")
    body["stream_options"] = (
        {**options, "include_usage": True} if type(options) is dict else {"include_usage": True}
    )


def without_usage(lines: bytes) -> bytes:
    """Chunk lines without the usage the client did not ask for.

    Drops the usage-only chunk (no choices) and a `usage` field on other chunks; lines that carry
    no usage pass through byte for byte, so the common case is one substring search.
    """
    if _USAGE_KEY not in lines:
        return lines
    lines = lines.replace(_NULL_USAGE, b"")
    if _USAGE_KEY not in lines:
        return lines
    kept: list[bytes] = []
    for line in lines.split(b"\n"):
        if _USAGE_KEY in line:
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                event = None
            if type(event) is dict and "usage" in event:
                usage = event.pop("usage")
                if usage is not None and not event.get("choices"):
                    continue
                line = orjson.dumps(event)
        kept.append(line)
    return b"\n".join(kept)


def delivered_deltas(lines: bytes) -> int:
    """How many deltas with text (content or reasoning) these chunk lines carry."""
    return lines.count(_CONTENT_DELTA) - lines.count(_EMPTY_CONTENT) + lines.count(_REASONING_DELTA)


def streamed_usage(lines: bytes) -> dict[str, Any] | None:
    """The usage one of these chunk lines reports, if any (the upstream's last chunk, usually)."""
    if _REPORTED_USAGE not in lines:
        return None
    for line in lines.split(b"\n"):
        if _REPORTED_USAGE in line:
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            usage = event.get("usage") if type(event) is dict else None
            if type(usage) is dict:
                return usage
    return None


def usage_event(
    request_id: str,
    connection: ConnectionCredentials,
    served: Candidate,
    usage: dict[str, Any] | None,
    *,
    partial: bool = False,
    delivered: int = 0,
) -> UsageEvent:
    """The `UsageEvent` for a request; counts the upstream did not report are 0.

    A `partial` answer without the upstream's usage is billed `delivered` completion tokens
    (`delivered_deltas`), marked `estimated`; its prompt is not counted.
    """
    usage = _chat_shaped(usage)
    estimated = partial and usage is None
    completion = delivered if estimated else _tokens(usage, "completion_tokens")
    return UsageEvent(
        request_id=request_id,
        app_id=connection.app_id,
        connection_id=connection.connection_id,
        provider=served.provider,
        model=served.model,
        prompt_tokens=_tokens(usage, "prompt_tokens"),
        completion_tokens=completion,
        total_tokens=completion if estimated else _tokens(usage, "total_tokens"),
        cached_tokens=_tokens(_details(usage, "prompt_tokens_details"), "cached_tokens"),
        cache_write_tokens=_tokens(_details(usage, "prompt_tokens_details"), "cache_write_tokens"),
        reasoning_tokens=_tokens(_details(usage, "completion_tokens_details"), "reasoning_tokens"),
        partial=partial,
        estimated=estimated,
        at=datetime.now(UTC),
    )


def encoded(event: UsageEvent) -> bytes:
    """`event` as the bytes `model_dump_json` writes (str, int, bool fields and one UTC datetime,
    which orjson writes the same way), in a fifth of its time: one per request."""
    return orjson.dumps(event.__dict__, option=orjson.OPT_UTC_Z)


def _chat_shaped(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Responses API usage (`input_tokens`, `output_tokens`) under Chat Completions' names."""
    if usage is None or "prompt_tokens" in usage or "input_tokens" not in usage:
        return usage
    return {
        "prompt_tokens": usage.get("input_tokens"),
        "completion_tokens": usage.get("output_tokens"),
        "total_tokens": usage.get("total_tokens"),
        "prompt_tokens_details": usage.get("input_tokens_details"),
        "completion_tokens_details": usage.get("output_tokens_details"),
    }


def _details(usage: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    details = usage.get(name) if usage is not None else None
    return details if type(details) is dict else None


def _tokens(usage: dict[str, Any] | None, name: str) -> int:
    value = usage.get(name) if usage is not None else None
    return value if type(value) is int and value >= 0 else 0
