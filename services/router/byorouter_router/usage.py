"""Token usage: always asked of a streaming upstream, shown to a client only if it asked, reported.

Usage is what the user pays for, so the router always has the upstream send it; a client that
did not ask (`stream_options.include_usage`) gets the answer without it. Every finished request
is reported as a `UsageEvent` (`usage_event`), whoever served it.
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


def usage_event(
    request_id: str,
    connection: ConnectionCredentials,
    served: Candidate,
    usage: dict[str, Any] | None,
) -> UsageEvent:
    """The `UsageEvent` for a finished request; counts the upstream did not report are 0."""
    return UsageEvent(
        request_id=request_id,
        app_id=connection.app_id,
        connection_id=connection.connection_id,
        provider=served.provider,
        model=served.model,
        prompt_tokens=_tokens(usage, "prompt_tokens"),
        completion_tokens=_tokens(usage, "completion_tokens"),
        total_tokens=_tokens(usage, "total_tokens"),
        at=datetime.now(UTC),
    )


def _tokens(usage: dict[str, Any] | None, name: str) -> int:
    value = usage.get(name) if usage is not None else None
    return value if type(value) is int and value >= 0 else 0
