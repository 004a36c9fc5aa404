"""How an upstream's failures become the error envelope: its HTTP status, its body, its transport.

Upstream messages are passed on only where they help the app (a 400 says what was wrong with the
request) and always redacted: providers echo parts of keys in some messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from byorouter_common.errors import ByoError
from byorouter_common.redact import redact
from byorouter_router.upstream import UpstreamNotAllowed, not_allowed

# An error body longer than this is not read: only its start can hold a useful message.
MAX_ERROR_BODY = 64 * 1024
_MAX_MESSAGE = 500


def upstream_message(raw: bytes) -> tuple[str, str | None, str | None]:
    """(message, code, param) from an error body in OpenAI's shape or a self-hosted variant.

    Understands {"error": {"message", "code", "param"}}, a flat {"error": "text"}, and the
    {"message": ...} / {"detail": ...} bodies of vLLM, Ollama and FastAPI-based servers.
    """
    try:
        parsed: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "", None, None
    if not isinstance(parsed, dict):
        return "", None, None
    message: Any = None
    code: Any = None
    param: Any = None
    error = parsed.get("error")
    if isinstance(error, dict):
        message, code, param = error.get("message"), error.get("code"), error.get("param")
    elif isinstance(error, str):
        message = error
    else:
        message = parsed.get("message") or parsed.get("detail")
    text = redact(message)[:_MAX_MESSAGE] if isinstance(message, str) else ""
    return (
        text,
        code if isinstance(code, str) and code else None,
        param if isinstance(param, str) and param else None,
    )


def retry_after_seconds(headers: CIMultiDictProxy[str]) -> float | None:
    """The upstream's Retry-After, in seconds (it may be a number or an HTTP date)."""
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def status_error(
    provider: str, status: int, raw: bytes, headers: CIMultiDictProxy[str]
) -> ByoError:
    """The error an app sees when `provider` answered `status` (not 2xx)."""
    message, code, param = upstream_message(raw)
    suffix = f": {message}" if message else "."
    if status in (401, 403):
        return ByoError(
            502,
            "provider_auth_failed",
            f"The {provider} key on this connection was rejected by the provider ({status}).",
        )
    if status == 404:
        return ByoError(
            404,
            "model_not_found",
            # The upstream's message quotes the model id, which may be anything the app sent.
            f"The {provider} provider does not offer this model to this connection.",
        )
    if status == 429:
        return ByoError(
            429,
            "upstream_rate_limited",
            f"The {provider} provider rate-limited this request{suffix}",
            retry_after=retry_after_seconds(headers),
        )
    if status == 408:
        return ByoError(504, "upstream_timeout", f"The {provider} provider timed out{suffix}")
    if status == 413:
        return ByoError(
            413,
            "request_too_large",
            f"The {provider} provider refused the request as too large{suffix}",
        )
    if 400 <= status < 500:
        return ByoError(
            400,
            code or "invalid_request",
            f"The {provider} provider refused the request{suffix}",
            param=param,
        )
    return ByoError(
        502, "upstream_error", f"The {provider} provider failed with status {status}{suffix}"
    )


def too_large(provider: str, limit: int) -> ByoError:
    """The error for an answer longer than the router reads (its content is never quoted)."""
    return ByoError(
        502,
        "upstream_too_large",
        f"The {provider} provider sent an answer larger than the {limit / 2**20:g} MiB "
        "this router accepts.",
    )


class StalledUpstream(ByoError):
    """A streamed answer that missed its first-token, gap or whole-answer limit (a 504).

    The upstream has the request and may still be working on it (and billing it): the router
    never asks the same provider again, though it may fall back before anything was sent.
    """


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float
    read_s: float
    deadline_s: float
    # A streamed answer's pace, counted in SSE events (an upstream's comments do not count):
    # its first event after the request, each gap between events, the whole answer.
    first_token_s: float = 60.0
    gap_s: float = 60.0
    answer_s: float = 600.0


def transport_error(
    exc: BaseException, provider: str, *, started: bool, timeouts: Timeouts
) -> ByoError:
    """The error for a failed connection, timeout or cut stream while talking to `provider`.

    Never quotes the exception: aiohttp's messages carry the upstream URL.
    """
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        what = f"accept a connection within {timeouts.connect_s:g}s"
    elif isinstance(exc, aiohttp.ServerTimeoutError):
        what = f"send anything for {timeouts.read_s:g}s"
    elif isinstance(exc, TimeoutError):
        what = f"answer within {timeouts.deadline_s:g}s"
    else:
        what = ""
    if what:
        return ByoError(504, "upstream_timeout", f"The {provider} provider did not {what}.")
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
        exc.os_error, UpstreamNotAllowed
    ):
        return not_allowed(provider)
    if started:
        return ByoError(
            502,
            "upstream_error",
            f"The {provider} provider broke off the answer before it was complete.",
        )
    return ByoError(502, "upstream_unreachable", f"The {provider} provider could not be reached.")


def overloaded_error(provider: str, raw: bytes, headers: CIMultiDictProxy[str]) -> ByoError:
    """The error for an upstream that said it is overloaded (Anthropic's 529) rather than failed.

    A 5xx like any other (502), but with its own code and the upstream's Retry-After, so an app
    can tell "try again shortly" from "this provider is broken".
    """
    message, _, _ = upstream_message(raw)
    suffix = f": {message}" if message else "."
    return ByoError(
        502,
        "upstream_overloaded",
        f"The {provider} provider is overloaded{suffix}",
        retry_after=retry_after_seconds(headers),
    )
