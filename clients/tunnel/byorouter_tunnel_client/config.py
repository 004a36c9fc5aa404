"""The client's settings, checked once at start: where to dial, what to forward to, which secrets.

Secrets (the tunnel token, the model server's key) are read from the environment, a file or stdin,
never from an argument: arguments show up in `ps`, shell history and process listings.
"""

from __future__ import annotations

import ipaddress
import logging
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

TOKEN_ENV = "BYOROUTER_TUNNEL_TOKEN"  # noqa: S105 - a variable name, not a secret
UPSTREAM_KEY_ENV = "BYOROUTER_UPSTREAM_API_KEY"
DEFAULT_KEY_FILE = Path("~/.config/byorouter-tunnel/client.key")
DEFAULT_MAX_CONCURRENCY = 4

_log = logging.getLogger(__name__)


class ConfigError(Exception):
    """A setting the client cannot start with; the message says what to change."""


@dataclass(frozen=True)
class TunnelConfig:
    """Everything one client run needs. Build it with `check_tunnel_url` / `check_upstream_url`
    applied (the CLI does); tests build it directly and may shorten the timers."""

    url: str
    upstream: str
    token: str = field(repr=False)
    key_file: Path = DEFAULT_KEY_FILE
    upstream_key: str | None = field(default=None, repr=False)
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    # How long the service may take to answer `hello` before the attempt counts as failed.
    handshake_timeout_s: float = 15.0
    models_timeout_s: float = 5.0
    upstream_connect_timeout_s: float = 10.0


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_tunnel_url(url: str) -> str:
    """`wss://` anywhere; `ws://` only to this machine (development), since the token and the
    session travel in the clear otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(
            f"--url must be a wss:// URL, e.g. wss://byorouter.example/tunnel (got {url!r})"
        )
    if parts.scheme == "ws" and not is_loopback_host(parts.hostname):
        raise ConfigError(
            "--url uses ws:// to a host that is not this machine; the tunnel token would travel "
            "unencrypted. Use wss:// (ws:// is only for localhost during development)."
        )
    if parts.username or parts.password:
        raise ConfigError("--url must not carry credentials; the token comes from the environment")
    return url


def check_upstream_url(url: str) -> str:
    """The model server's OpenAI-compatible base URL, e.g. http://127.0.0.1:11434/v1."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--upstream must be an http(s):// URL (got {url!r})")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError("--upstream must be a plain base URL, without query, fragment or user")
    return url.rstrip("/")


def read_secret_file(path: Path, what: str) -> str:
    """One secret from a file (surrounding whitespace dropped); a file others can read is
    allowed but named, so the user can tighten it."""
    try:
        text = path.read_text().strip()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if not text:
        raise ConfigError(f"the {what} file {path} is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        _log.warning("the %s file %s is readable by other users; chmod 600 it", what, path)
    return text


def token_from(env: Mapping[str, str], token_file: Path | None, stdin_text: str | None) -> str:
    """The long-lived tunnel token: `--token-file`, else `--token-stdin`, else the environment."""
    if token_file is not None:
        return read_secret_file(token_file, "token")
    if stdin_text is not None:
        token = stdin_text.strip()
        if not token:
            raise ConfigError("--token-stdin was given but stdin held no token")
        return token
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(
            f"no tunnel token: set {TOKEN_ENV}, or pass --token-file PATH or --token-stdin "
            "(the token is never accepted as an argument)"
        )
    return token


def upstream_key_from(env: Mapping[str, str], key_file: Path | None) -> str | None:
    """The model server's own API key, if it needs one: `--upstream-key-file`, else the
    environment, else none (the router may send one inside the encrypted request)."""
    if key_file is not None:
        return read_secret_file(key_file, "upstream key")
    return env.get(UPSTREAM_KEY_ENV, "").strip() or None
