"""End-to-end encryption between the router and a tunnel client: the relay sees ciphertext only.

Per request ("stream"), the router picks a random 32-byte stream secret and seals it, with the
request's metadata, to the client's X25519 public key with HPKE (RFC 9180 base mode:
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, from `cryptography`). Both ends then
derive one key per direction from the stream secret (HKDF-SHA256, labels "request"/"response"),
and every later frame is ChaCha20-Poly1305 with its sequence number as the nonce and the stream id
plus frame kind as associated data. So a frame replayed, reordered, moved to another stream or
relabelled fails to open, and the two directions never share a nonce under one key.

What this protects and what not is in docs/tunnel.md: the tunnel service and NATS are blind; the
router is not (it translates and meters).
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from byorouter_tunnel_client.fingerprints import fingerprint as fingerprint
from byorouter_tunnel_client.protocol import DecryptError as DecryptError

PROTOCOL = b"byorouter-tunnel/1"
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)
_SECRET_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_key_text(key: X25519PublicKey) -> str:
    """The public key as the client reports it and keystore stores it (base64url, 43 chars)."""
    return _b64(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def load_public_key(text: str) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(_unb64(text))
    except ValueError as exc:
        raise ValueError("not an X25519 public key") from exc


def load_or_create_private_key(path: Path) -> X25519PrivateKey:
    """The client's key pair, made on first run and kept mode 0600 from its first byte."""
    if path.exists():
        raw = path.read_bytes()
        return X25519PrivateKey.from_private_bytes(_unb64(raw.decode().strip()))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = X25519PrivateKey.generate()
    raw_key = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(_b64(raw_key) + "\n")
    return key


def _info(stream_id: str) -> bytes:
    return PROTOCOL + b" open " + stream_id.encode()


def _direction_key(secret: bytes, label: bytes) -> ChaCha20Poly1305:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PROTOCOL + b" " + label)
    return ChaCha20Poly1305(key.derive(secret))


@dataclass
class StreamKeys:
    """One stream's two directions. `seal_*`/`open_*` check sequence numbers strictly."""

    stream_id: str
    _request: ChaCha20Poly1305
    _response: ChaCha20Poly1305
    _sent: int = 0
    _received: int = 0

    @classmethod
    def from_secret(cls, stream_id: str, secret: bytes) -> Self:
        return cls(
            stream_id,
            _direction_key(secret, b"request"),
            _direction_key(secret, b"response"),
        )

    def _aad(self, kind: str) -> bytes:
        return PROTOCOL + b" " + self.stream_id.encode() + b" " + kind.encode()

    def _seal(self, aead: ChaCha20Poly1305, kind: str, data: bytes) -> bytes:
        nonce = self._sent.to_bytes(12, "big")
        self._sent += 1
        return aead.encrypt(nonce, data, self._aad(kind))

    def _open(self, aead: ChaCha20Poly1305, kind: str, data: bytes) -> bytes:
        nonce = self._received.to_bytes(12, "big")
        try:
            plain = aead.decrypt(nonce, data, self._aad(kind))
        except InvalidTag:
            raise DecryptError(f"frame {self._received} of stream does not open") from None
        self._received += 1
        return plain


class RouterStream(StreamKeys):
    """The router's end: seals requests, opens responses."""

    def seal(self, kind: str, data: bytes) -> bytes:
        return self._seal(self._request, kind, data)

    def open(self, kind: str, data: bytes) -> bytes:
        return self._open(self._response, kind, data)


class ClientStream(StreamKeys):
    """The tunnel client's end: opens requests, seals responses."""

    def seal(self, kind: str, data: bytes) -> bytes:
        return self._seal(self._response, kind, data)

    def open(self, kind: str, data: bytes) -> bytes:
        return self._open(self._request, kind, data)


def open_stream(
    client_public_key: X25519PublicKey, stream_id: str, header: bytes
) -> tuple[bytes, RouterStream]:
    """Router: HPKE-seal a fresh stream secret plus `header` to the client; returns the sealed
    opening and the stream's keys."""
    secret = secrets.token_bytes(_SECRET_BYTES)
    sealed = _SUITE.encrypt(secret + header, client_public_key, _info(stream_id))
    return sealed, RouterStream.from_secret(stream_id, secret)


def accept_stream(
    private_key: X25519PrivateKey, stream_id: str, sealed: bytes
) -> tuple[bytes, ClientStream]:
    """Client: open a stream's sealed opening; returns the header and the stream's keys."""
    try:
        plain = _SUITE.decrypt(sealed, private_key, _info(stream_id))
    except Exception:  # cryptography raises InvalidTag or ValueError depending on the damage
        raise DecryptError("stream opening does not open with this client's key") from None
    if len(plain) < _SECRET_BYTES:
        raise DecryptError("stream opening too short")
    secret, header = plain[:_SECRET_BYTES], plain[_SECRET_BYTES:]
    return header, ClientStream.from_secret(stream_id, secret)
