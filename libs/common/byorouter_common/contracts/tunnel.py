"""Tunnel's subjects: one set per tunnel, served by the tunnel service copy holding its socket.

`byorouter.tunnel.<tunnel_id>.http` is a streamed request (the streaming protocol of
`byorouter_common.bus`) whose payload and reply chunks are ciphertext only the router and the
tunnel client can open: the payload is the stream's sealed frames (`byorouter_tunnel_client.
protocol.pack_parts`), each reply `chunk`/`done` one sealed response frame. So these messages are
binary, with their metadata in headers, not JSON: the one exception to the contract's JSON rule,
because the tunnel service must not be able to read them (docs/decisions/0007-tunnel-protocol.md).

Every copy holding a socket for the tunnel subscribes `.http` in the tunnel's own queue group
(`queue_group`), so two clients of one tunnel share its requests and no subscriber at all means
the tunnel is offline: the router gets no-responders at once. `.cancel` and `.status` reach every
such copy (no queue group).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from datetime import datetime
from typing import Final

from pydantic import Field

from byorouter_common.contracts.base import Contract

SERVICE: Final = "tunnel"
PREFIX: Final = "byorouter.tunnel"

# The header of a `.http` request naming its stream (bound into its encryption). A request too
# large for one bus message comes in parts: `byorouter_common.bus.uploads`.
HDR_STREAM: Final = "Byo-Stream"


def http_subject(tunnel_id: str) -> str:
    return f"{PREFIX}.{tunnel_id}.http"


def cancel_subject(tunnel_id: str) -> str:
    return f"{PREFIX}.{tunnel_id}.cancel"


def status_subject(tunnel_id: str) -> str:
    return f"{PREFIX}.{tunnel_id}.status"


def upload_subject(tunnel_id: str, stream_id: str) -> str:
    return f"{PREFIX}.{tunnel_id}.upload.{stream_id}"


def queue_group(tunnel_id: str) -> str:
    """Each tunnel's own queue group: its clients share its requests."""
    return f"tunnel.{tunnel_id}"


def status_wildcard() -> str:
    """Every tunnel's `.status`, for NATS permissions (the gateway asks it)."""
    return f"{PREFIX}.*.status"


def http_wildcard() -> str:
    """Every tunnel's `.http`, for NATS permissions (the router calls it)."""
    return f"{PREFIX}.*.http"


def cancel_wildcard() -> str:
    """Every tunnel's `.cancel`, for NATS permissions (the router sends it)."""
    return f"{PREFIX}.*.cancel"


def upload_wildcard() -> str:
    """Every tunnel's `.upload.<stream_id>`, for NATS permissions (the router sends parts)."""
    return f"{PREFIX}.*.upload.*"


def public_key_bytes(public_key: str) -> bytes | None:
    """The 32 raw bytes of an X25519 public key as clients send it (base64url), or None."""
    try:
        raw = base64.urlsafe_b64decode(public_key + "=" * (-len(public_key) % 4))
    except (ValueError, binascii.Error):
        return None
    # Canonical only: the decoder skips stray characters, and the stored text must be the key.
    canonical = base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == public_key.rstrip("=")
    return raw if len(raw) == 32 and canonical else None


def public_key_fingerprint(public_key: str) -> str:
    """A short, human-comparable name for a public key: the same as the tunnel client shows
    (`byorouter_tunnel_client.e2e.fingerprint`), so a person can compare the two."""
    raw = base64.urlsafe_b64decode(public_key + "=" * (-len(public_key) % 4))
    digest = hashlib.sha256(raw).hexdigest()
    return ":".join(digest[i : i + 4] for i in range(0, 16, 4))


# ASCII only: `str.isalnum` would also pass letters and digits of every other script.
TUNNEL_ID_PATTERN: Final = r"^tun_[A-Za-z0-9_-]{4,60}$"
_TUNNEL_ID: Final = re.compile(TUNNEL_ID_PATTERN)


def is_tunnel_id(value: str) -> bool:
    """Tunnel ids go into subjects: only `tun_` and URL-safe characters, no dots or wildcards."""
    return _TUNNEL_ID.fullmatch(value) is not None


class TunnelCancel(Contract):
    """The app's client went away: the client aborts this stream's upstream request."""

    stream_id: str


class ClientStatus(Contract):
    """One connected client, as the copy holding its socket sees it."""

    connected_since: datetime
    rtt_ms: float | None
    client_version: str
    in_flight: int
    max_concurrency: int
    public_key_fingerprint: str


class TunnelClients(Contract):
    """One copy's answer to `.status`: the clients of the tunnel whose sockets it holds."""

    tunnel_id: str
    clients: list[ClientStatus] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
