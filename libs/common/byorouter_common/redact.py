"""The one place that knows what a secret looks like, so no log line, trace or error shows one."""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Provider keys (OpenAI sk-/sk-proj-, Anthropic sk-ant-, OpenRouter sk-or-), our app keys
# (byo_sk_...), bearer tokens, and JSON/query fields whose names say they hold a secret.
_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\bbyo_(?:sk|ts|tok)_[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/\-]{8,}=*"),
    re.compile(
        r"(?i)(\"?(?:api[_-]?key|authorization|x-api-key|secret|password|token|code_verifier"
        r"|access_token|refresh_token)\"?\s*[:=]\s*\"?)[^\",}\s&]{4,}"
    ),
)

REDACTED = "[REDACTED]"

# Shapes whose secret part is all but the first group, matched before `_PATTERNS`:
# URL user-info (`https://user:pass@host`, token-style `nats://token@host`), query values
# (`?key=`, `&api_key=`, `?code=`), our tunnel tokens and sessions (`byo_tun_`, `byo_tses_`),
# Connect's one-time codes (43 base64url characters) in JSON and Python dict reprs, and single-
# quoted (dict repr) secret fields.
_SHAPES: tuple[re.Pattern[str], ...] = (
    re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://)[^/\s@'\"]+(?=@)"),
    re.compile(
        r"(?i)([?&](?:key|api[_-]?key|apikey|token|access_token|code|secret|password|sig)=)"
        r"[^&\s#\"']+"
    ),
    re.compile(r"()\bbyo_(?:tun|tses)_[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)([\"']code[\"']\s*:\s*[\"'])[A-Za-z0-9_\-]{32,}"),
    re.compile(
        r"(?i)('(?:api[_-]?key|authorization|x-api-key|secret|password|token|code_verifier"
        r"|access_token|refresh_token)'\s*:\s*')[^']{4,}"
    ),
)

# `Basic <base64 of user:password>`, told apart from the English word by what it decodes to.
_BASIC = re.compile(r"(?i)\b(basic\s+)([A-Za-z0-9+/]{6,}={0,2})")

# Something every pattern above needs (a key family, a field name, a URL's `@`, a query's `?` or
# `&`), searched in the case-folded text: most log text has none of it, and one search then
# spares it a dozen substitutions (an access line: ~60 µs down to ~20). A new pattern must add
# its own trigger here.
_MAYBE_SECRET = re.compile(r"sk-|byo_|bearer|basic|key|auth|secret|passw|token|code|@|[?&]")

# Names of structured log fields (and dict keys inside them) whose value is a secret.
_SECRET_FIELD = re.compile(
    r"(?i)(?:^|[_-])(?:api[_-]?key|authorization|secret|password|passwd|token|code_verifier"
    r"|credentials?)$"
)


def _redact_basic(match: re.Match[str]) -> str:
    try:
        decoded = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        return match.group(0)
    return match.group(1) + REDACTED if b":" in decoded else match.group(0)


def _redact_shapes(text: str) -> str:
    for pattern in _SHAPES:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return _BASIC.sub(_redact_basic, text)


@functools.lru_cache(maxsize=1024)
def is_secret_field(name: str) -> bool:
    """True if a field called `name` holds a secret whatever its value looks like."""
    return bool(_SECRET_FIELD.search(name))


def redact_value(value: Any) -> Any:
    """`value` (a log field) with secrets redacted: strings, and dicts and lists recursively.

    Anything else that JSON cannot hold is turned into its `str` first, so the text an encoder
    would otherwise write is redacted too.
    """
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if is_secret_field(str(k)) and v else redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v) for v in value]
    return redact(str(value))


def safe_url(url: str) -> str:
    """`url` without its user-info, for logging where a service connects (NATS, databases).

    A comma-separated server list (as NATS_URL allows) keeps every address.
    """
    return ",".join(_without_userinfo(part.strip()) for part in url.split(","))


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def redact(text: str) -> str:
    """Return `text` with anything that looks like a secret replaced by a marker."""
    if not _MAYBE_SECRET.search(text.casefold()):
        return text
    text = _redact_shapes(text)
    for pattern in _PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


# Below this length even the last four characters are a quarter of the key or more.
_MIN_KEY_LEN_TO_SHOW_TAIL = 16


def mask_key(key: str) -> str:
    """A label safe to show a person: the key's family (`sk-`) and at most its last four.

    A short key shows none of itself, and no characters past the family prefix ever show.
    """
    key = key.strip()
    family = "sk-" if key.startswith("sk-") else ""
    if len(key) < _MIN_KEY_LEN_TO_SHOW_TAIL:
        return f"{family}..." if family else "****"
    return f"{family}...{key[-4:]}"
