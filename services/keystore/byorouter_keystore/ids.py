"""Identifiers and app API keys, all drawn from `secrets`.

App API key format: ``byo_sk_<key_id>_<secret>`` with ``key_id`` 12 characters ``[a-z0-9]`` and
``secret`` 43 characters ``[A-Za-z0-9]`` (log2(62) * 43 ≈ 256 bits). Only the SHA-256 hex digest of
the whole key string is stored; see `hash_app_key`.
"""

from __future__ import annotations

import hashlib
import secrets
import string

_LOWER_ALNUM = string.ascii_lowercase + string.digits
_ALNUM = string.ascii_letters + string.digits

APP_KEY_PREFIX = "byo_sk_"
KEY_ID_LENGTH = 12
KEY_SECRET_LENGTH = 43


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def new_app_id() -> str:
    return "app_" + _random(_LOWER_ALNUM, 20)


def new_client_id() -> str:
    return "cli_" + _random(_LOWER_ALNUM, 20)


def new_connection_id() -> str:
    return "conn_" + _random(_LOWER_ALNUM, 24)


def new_credential_id() -> str:
    return "cred_" + _random(_LOWER_ALNUM, 24)


def new_tunnel_id() -> str:
    # 22 URL-safe characters (128 bits): tunnel ids go into subjects, see `tn.is_tunnel_id`.
    return "tun_" + secrets.token_urlsafe(16)


def new_app_key() -> tuple[str, str]:
    """A fresh app API key: (key_id, full key string). The full key is shown once, never stored."""
    key_id = _random(_LOWER_ALNUM, KEY_ID_LENGTH)
    return key_id, f"{APP_KEY_PREFIX}{key_id}_{_random(_ALNUM, KEY_SECRET_LENGTH)}"


def hash_app_key(key: str) -> str:
    """SHA-256 hex digest of the full key string: what is stored and what the gateway sends."""
    return hashlib.sha256(key.encode()).hexdigest()


def app_key_label(key_id: str, key: str) -> str:
    """A label safe to show: the public key id and the key's last four characters."""
    return f"{APP_KEY_PREFIX}{key_id}_...{key[-4:]}"
