"""A public key's short, human-comparable name, without the `cryptography` package.

The tunnel service shows fingerprints but never encrypts: importing this instead of `e2e` keeps
`cryptography` (7 MiB resident) out of it.
"""

from __future__ import annotations

import base64
import hashlib


def fingerprint(public_key: str) -> str:
    """A short, human-comparable name for a public key (shown by the client and the status)."""
    raw = base64.urlsafe_b64decode(public_key + "=" * (-len(public_key) % 4))
    digest = hashlib.sha256(raw).hexdigest()
    return ":".join(digest[i : i + 4] for i in range(0, 16, 4))
