"""Envelope encryption of provider credentials and the versioned keyring of key-encryption keys.

Each credential gets its own random 256-bit data key (DEK). The secret is sealed with
AES-256-GCM under the DEK, and the DEK is wrapped with AES-256-GCM under the active
key-encryption key (KEK). Both layers carry associated data naming the connection and provider
(the wrap also names the KEK version), so a row copied to another connection or provider fails
to decrypt instead of handing out someone else's key. Since binding v2 the secret's associated
data also names its `Destination` (base URL, tunnel), so a row pointed at another address does
not open either (docs/decisions/0016-destination-binding.md). Rotation re-wraps DEKs only; the
sealed secrets never change.

The keyring is JSON ``{"active": N, "keys": {"1": "<base64 of 32 bytes>", ...}}``, kept in a file
of mode 0600 (rewritten atomically) or, for containers, given inline in ``BYOROUTER_KEYRING``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from byorouter_common.errors import ByoError

KEY_BYTES = 32
NONCE_BYTES = 12
_SECRET_AAD = b"byorouter/credential/v1|"
_SECRET_AAD_V2 = b"byorouter/credential/v2|"
_DEK_AAD = b"byorouter/dek/v1|"
# v1: the secret names its owner and provider only (rows stored before migration 0012).
# v2: it names its destination too. Only v2 is ever written; v1 rows are re-sealed (`bindings`).
BINDING_V1 = 1
BINDING_VERSION = 2


class KeyringError(Exception):
    """The keyring is missing, malformed or cannot be changed; the message says what to do."""


class UnknownKekVersion(Exception):
    """A row names a KEK version this process does not hold (yet): reload and try again."""

    def __init__(self, version: int) -> None:
        super().__init__(f"key-encryption key version {version} is not in the keyring")
        self.version = version


def undecryptable() -> ByoError:
    # Deliberately vague about the row and never carrying any bytes of it.
    return ByoError(
        500,
        "credential_undecryptable",
        "A stored credential could not be decrypted: it does not belong to this connection "
        "and provider, or its key-encryption key is no longer in the keyring.",
    )


@dataclass(frozen=True)
class Keyring:
    """Immutable set of KEKs by version; a change produces a new `Keyring`.

    One with a `refusal` opens by version as usual but raises it wherever something would be
    sealed or re-wrapped, which is wherever `active` is read (see `KeyringStore.current`).
    """

    active_version: int
    keys: Mapping[int, bytes]
    refusal: Callable[[], ByoError] | None = field(default=None, compare=False)

    @property
    def active(self) -> int:
        """The KEK version new data keys are wrapped with."""
        if self.refusal is not None:
            raise self.refusal()
        return self.active_version

    @classmethod
    def generate(cls) -> Keyring:
        return cls(1, MappingProxyType({1: secrets.token_bytes(KEY_BYTES)}))

    @classmethod
    def from_json(cls, text: str) -> Keyring:
        """Parse keyring JSON; errors describe the problem, never the key material."""
        try:
            doc = json.loads(text)
            active = int(doc["active"])
            keys = {int(v): base64.b64decode(k, validate=True) for v, k in doc["keys"].items()}
        except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
            raise KeyringError(
                'keyring is not valid JSON of the form {"active": N, "keys": {"N": "<base64>"}}'
            ) from None
        if any(len(k) != KEY_BYTES for k in keys.values()):
            raise KeyringError(f"every keyring key must be {KEY_BYTES} bytes (base64-encoded)")
        if active not in keys:
            raise KeyringError(f"keyring's active version {active} has no key")
        return cls(active, MappingProxyType(keys))

    def to_json(self) -> str:
        keys = {str(v): base64.b64encode(k).decode() for v, k in sorted(self.keys.items())}
        return json.dumps({"active": self.active_version, "keys": keys}, indent=2) + "\n"

    @property
    def versions(self) -> list[int]:
        return sorted(self.keys)

    def kek(self, version: int) -> bytes:
        try:
            return self.keys[version]
        except KeyError:
            raise UnknownKekVersion(version) from None

    def with_new_version(self) -> Keyring:
        """A keyring with one more KEK, version max+1, made active; older versions stay readable."""
        version = max(self.keys) + 1
        keys = dict(self.keys)
        keys[version] = secrets.token_bytes(KEY_BYTES)
        return Keyring(version, MappingProxyType(keys))

    def without(self, versions: Iterable[int]) -> Keyring:
        drop = set(versions) - {self.active_version}
        keys = {v: k for v, k in self.keys.items() if v not in drop}
        return Keyring(self.active_version, MappingProxyType(keys))


@dataclass(frozen=True)
class SealedSecret:
    """What is stored for one credential: which KEK wraps the DEK, the wrapped DEK, the secret,
    and which associated-data layout the secret was sealed with."""

    kek_version: int
    wrapped_dek: bytes
    ciphertext: bytes
    binding_version: int = BINDING_VERSION


@dataclass(frozen=True)
class Destination:
    """Everything besides the provider that decides where a key is sent; sealed with the key."""

    base_url: str | None = None
    tunnel_id: str | None = None


NOWHERE = Destination()


def _field(value: str | None) -> str:
    # Length-prefixed, so no URL (which may hold '|') can pass for another split of the fields.
    return "-" if value is None else f"{len(value)}:{value}"


def _secret_aad(
    connection_id: str, provider: str, destination: Destination, binding_version: int
) -> bytes:
    if binding_version == BINDING_V1:
        return _SECRET_AAD + f"{connection_id}|{provider}".encode()
    fields = (connection_id, provider, destination.base_url, destination.tunnel_id)
    return _SECRET_AAD_V2 + "|".join(map(_field, fields)).encode()


def _dek_aad(kek_version: int, connection_id: str, provider: str) -> bytes:
    # No destination here: the secret's own tag already refuses another one, and rotation
    # re-wraps data keys without having to read (or race with edits of) base URLs and tunnels.
    return _DEK_AAD + f"{kek_version}|{connection_id}|{provider}".encode()


def _encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _decrypt(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag:
        raise undecryptable() from None


def seal(
    keyring: Keyring,
    plaintext: bytes,
    connection_id: str,
    provider: str,
    destination: Destination = NOWHERE,
) -> SealedSecret:
    """Encrypt `plaintext` under a fresh DEK wrapped by the active KEK, bound to its owner,
    provider and destination (binding v2)."""
    dek = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    aad = _secret_aad(connection_id, provider, destination, BINDING_VERSION)
    ciphertext = _encrypt(dek, plaintext, aad)
    version = keyring.active
    wrapped = _encrypt(keyring.kek(version), dek, _dek_aad(version, connection_id, provider))
    return SealedSecret(version, wrapped, ciphertext, BINDING_VERSION)


def unseal(
    keyring: Keyring,
    sealed: SealedSecret,
    connection_id: str,
    provider: str,
    destination: Destination = NOWHERE,
) -> bytes:
    """The plaintext; `UnknownKekVersion` if the KEK is missing, a 500 `ByoError` if tampered
    (a v2 secret whose destination is not the one it was sealed with is tampered)."""
    if sealed.binding_version not in (BINDING_V1, BINDING_VERSION):
        raise undecryptable()
    dek = _unwrap(keyring, sealed, connection_id, provider)
    aad = _secret_aad(connection_id, provider, destination, sealed.binding_version)
    return _decrypt(dek, sealed.ciphertext, aad)


def rewrap(keyring: Keyring, sealed: SealedSecret, connection_id: str, provider: str) -> bytes:
    """The same DEK wrapped under the active KEK; the sealed secret itself is untouched."""
    dek = _unwrap(keyring, sealed, connection_id, provider)
    version = keyring.active
    return _encrypt(keyring.kek(version), dek, _dek_aad(version, connection_id, provider))


def _unwrap(keyring: Keyring, sealed: SealedSecret, connection_id: str, provider: str) -> bytes:
    kek = keyring.kek(sealed.kek_version)
    return _decrypt(kek, sealed.wrapped_dek, _dek_aad(sealed.kek_version, connection_id, provider))


# --- the keyring file ---------------------------------------------------------------------------


def read_keyring_file(path: Path) -> Keyring:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KeyringError(
            f"keyring file {path} does not exist; create it once with "
            "`python -m byorouter_keystore init-keyring` (or set BYOROUTER_KEYRING_FILE to the "
            "existing one). Keystore never creates keys on its own, so a misconfigured deploy "
            "cannot silently lose access to stored credentials."
        ) from None
    except OSError as exc:
        raise KeyringError(f"cannot read keyring file {path}: {exc.strerror}") from None
    try:
        return Keyring.from_json(text)
    except KeyringError as exc:
        raise KeyringError(f"keyring file {path}: {exc}") from None


def write_keyring_file(path: Path, keyring: Keyring) -> None:
    """Replace the keyring file atomically: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(keyring.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory is: after a power cut the old file could
    # come back, without the KEK that rows were re-wrapped onto since.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def init_keyring_file(path: Path) -> bool:
    """Create a keyring file with one fresh KEK unless one exists; True if it was created."""
    with _file_lock(path):
        if path.exists():
            return False
        write_keyring_file(path, Keyring.generate())
        return True


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the keyring between keystore copies on one host."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class KeyringStore:
    """This process's keyring, where it came from (a file, or inline and fixed), and whether it
    may be used.

    `current` seals only with the newest KEK version this process has heard of and, once
    `require_confirmation` is on (a running keystore), only while the database holds a recent
    confirmation of that version (`keys.confirm_copy`); opening by version always works. Prune
    relies on both.
    """

    def __init__(self, keyring: Keyring, path: Path | None) -> None:
        self._keyring = keyring
        self.path = path
        self._lock = asyncio.Lock()
        # Unknown until `from_file` says: the first `refresh` then reads the file again.
        self._signature: tuple[int, int, int] | None = None
        self._newest_seen = keyring.active
        self._needs_confirmation = False
        self._confirmed_until = 0.0

    @classmethod
    def from_inline(cls, text: str) -> KeyringStore:
        try:
            return cls(Keyring.from_json(text), None)
        except KeyringError as exc:
            raise KeyringError(f"BYOROUTER_KEYRING: {exc}") from None

    @classmethod
    def from_file(cls, path: Path) -> KeyringStore:
        signature = _file_signature(path)  # before reading: a change meanwhile is seen later
        store = cls(read_keyring_file(path), path)
        store._signature = signature
        return store

    @property
    def current(self) -> Keyring:
        """The keyring to seal and open with; one that refuses to seal (503) while this copy
        knows of a newer KEK than it holds, or its confirmation has run out."""
        self.refresh()
        keyring, newest = self._keyring, self._newest_seen
        if keyring.active_version < newest:
            return replace(keyring, refusal=lambda: keyring_behind(keyring.active_version, newest))
        if self._needs_confirmation and time.monotonic() >= self._confirmed_until:
            return replace(keyring, refusal=copy_unconfirmed)
        return keyring

    @property
    def loaded(self) -> Keyring:
        """The keyring as last read, unchecked: what this copy reports and what prune edits."""
        return self._keyring

    def refresh(self) -> None:
        """Re-read the file if it changed since it was read, so a lost rotation event heals at
        the next use; an unchanged file costs one stat."""
        if self.path is not None and _file_signature(self.path) not in (None, self._signature):
            self.reload()

    def reload(self) -> None:
        """Pick up a rotation or prune another copy wrote; an inline keyring never changes."""
        if self.path is not None:
            signature = _file_signature(self.path)
            self._replace(read_keyring_file(self.path), signature)

    def saw_version(self, version: int) -> None:
        """Another copy made `version` active: refuse to seal with anything older from now on."""
        self._newest_seen = max(self._newest_seen, version)

    def require_confirmation(self) -> None:
        """From now on `current` works only within a confirmation (`confirmed`)."""
        self._needs_confirmation = True

    def confirmed(self, until_monotonic: float) -> None:
        """The database records this copy's active version until this `time.monotonic()`."""
        self._confirmed_until = until_monotonic

    def _replace(self, keyring: Keyring, signature: tuple[int, int, int] | None) -> None:
        self._keyring = keyring
        self._signature = signature
        self.saw_version(keyring.active_version)

    def _require_file(self, what: str) -> Path:
        if self.path is None:
            raise ByoError(
                409,
                "keyring_not_rotatable",
                f"Key {what} needs a keyring file (BYOROUTER_KEYRING_FILE); this keystore reads "
                "its keyring inline from BYOROUTER_KEYRING, which it cannot rewrite. Generate "
                "the new keyring offline and redeploy instead.",
            )
        return self.path

    async def rotate(self) -> Keyring:
        """Add KEK version max+1, make it active and persist it before anything is wrapped."""
        path = self._require_file("rotation")
        self.refresh()
        if self._keyring.active_version < self._newest_seen:
            # Its max+1 would be a second, different key under a version number already in use.
            raise keyring_behind(self._keyring.active_version, self._newest_seen)
        async with self._lock:
            _, after, signature = await asyncio.to_thread(
                self._update_file, path, Keyring.with_new_version
            )
            self._replace(after, signature)
            return after

    async def prune(self, in_use: set[int]) -> list[int]:
        """Drop every version not in `in_use` (never the active one); returns what was dropped."""
        path = self._require_file("pruning")
        async with self._lock:
            before, after, signature = await asyncio.to_thread(
                self._update_file, path, lambda ring: ring.without(set(ring.keys) - in_use)
            )
            self._replace(after, signature)
            return sorted(set(before.keys) - set(after.keys))

    @staticmethod
    def _update_file(
        path: Path, change: Callable[[Keyring], Keyring]
    ) -> tuple[Keyring, Keyring, tuple[int, int, int] | None]:
        # Re-read under the lock so a change another copy just wrote is never overwritten.
        with _file_lock(path):
            before = read_keyring_file(path)
            after = change(before)
            write_keyring_file(path, after)
            return before, after, _file_signature(path)


def _file_signature(path: Path | None) -> tuple[int, int, int] | None:
    # Every write is a rename onto the path, so a new inode means new contents.
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None  # gone or unreadable for a moment: keep the keys already held
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def keyring_behind(holds: int, newest: int) -> ByoError:
    return ByoError(
        503,
        "keyring_behind",
        f"This keystore copy holds key-encryption keys up to v{holds}, but v{newest} is active "
        "elsewhere; it stores no credential until its keyring file (BYOROUTER_KEYRING_FILE) "
        f"has v{newest}. Give it the keyring the other copies use.",
    )


def copy_unconfirmed() -> ByoError:
    return ByoError(
        503,
        "keystore_copy_unconfirmed",
        "This keystore copy has not recently confirmed its key-encryption key in the database, "
        "so it stores no credential; try again shortly.",
        retry_after=1.0,
    )
