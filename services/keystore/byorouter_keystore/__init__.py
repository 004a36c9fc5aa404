"""BYORouter keystore: the only service that talks to PostgreSQL and holds key-encryption keys.

App API keys have the form ``byo_sk_<key_id>_<secret>``:

- ``key_id``: 12 characters ``[a-z0-9]``, public, used to look the key up;
- ``secret``: 43 characters ``[A-Za-z0-9]`` from ``secrets`` (about 256 bits).

Keystore stores only ``sha256(full key string)`` (hex) and a label ``byo_sk_<key_id>_...<last4>``.
A caller authenticates a key by sending ``key_id`` and the SHA-256 hex digest of the whole key
string (``APP_AUTHENTICATE``), so the key itself never crosses the bus after it is shown once.
"""
