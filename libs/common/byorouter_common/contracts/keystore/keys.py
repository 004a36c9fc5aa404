"""Key-encryption keys: rotate, prune and report the keyring; served by keystore, for operators."""

from __future__ import annotations

from pydantic import Field

from byorouter_common.contracts.base import Contract, Empty, Endpoint
from byorouter_common.contracts.keystore.names import SERVICE


class KeysRotated(Contract):
    active_version: int
    rewrapped: int
    # Apps' default provider keys, counted apart from connections' credentials.
    app_defaults_rewrapped: int = 0


class KeysPruned(Contract):
    active_version: int
    removed_versions: list[int]


class KeystoreCopyStatus(Contract):
    """One keystore copy as it last confirmed itself in the database."""

    copy_id: str
    host: str
    pid: int
    # The KEK version it seals with; below the newest, it blocks prune.
    active_version: int
    seen_seconds_ago: float
    # Confirmed within the lease: counted by prune (an older one is taken for gone).
    live: bool


class KeysStatus(Contract):
    active_version: int
    versions: list[int]
    credentials_by_version: dict[str, int]
    app_defaults_by_version: dict[str, int] = Field(default_factory=dict)
    copies: list[KeystoreCopyStatus] = Field(default_factory=list)


KEYS_ROTATE = Endpoint(
    "byorouter.keystore.keys.rotate",
    Empty,
    KeysRotated,
    SERVICE,
    "Add a new key-encryption key and re-wrap every data key with it.",
)
KEYS_PRUNE = Endpoint(
    "byorouter.keystore.keys.prune",
    Empty,
    KeysPruned,
    SERVICE,
    "Remove key-encryption keys that no stored credential uses any more.",
)
KEYS_STATUS = Endpoint(
    "byorouter.keystore.keys.status",
    Empty,
    KeysStatus,
    SERVICE,
    "Key-encryption key versions and how many credentials each wraps.",
)
