"""The one place that knows what a secret looks like, so no log line, trace or error shows one."""

from __future__ import annotations

import re

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


def redact(text: str) -> str:
    """Return `text` with anything that looks like a secret replaced by a marker."""
    for pattern in _PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


def mask_key(key: str) -> str:
    """A label safe to show a person: the key's family prefix and its last four characters."""
    key = key.strip()
    if len(key) < 12:
        return "..." + key[-2:] if len(key) > 4 else "****"
    prefix = key[:3] if key.startswith("sk-") else key[:2]
    return f"{prefix}...{key[-4:]}"
