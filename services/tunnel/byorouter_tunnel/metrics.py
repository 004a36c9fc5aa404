"""The tunnel service's metrics: sockets online and streams in flight are read from the hub when
scraped (nothing to update per frame); refusals for a busy client are counted as they happen."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from prometheus_client import Counter, Gauge

from byorouter_common.metrics import NAMESPACE

if TYPE_CHECKING:
    from byorouter_tunnel.hub import Hub

SOCKETS_ONLINE: Final = Gauge(
    "tunnel_sockets_online",
    "Tunnel client sockets connected to this copy (a tunnel may have several).",
    namespace=NAMESPACE,
)
TUNNELS_ONLINE: Final = Gauge(
    "tunnel_tunnels_online",
    "Tunnels with at least one client socket on this copy.",
    namespace=NAMESPACE,
)
STREAMS_IN_FLIGHT: Final = Gauge(
    "tunnel_streams_in_flight",
    "Requests being relayed to tunnel clients on this copy now.",
    namespace=NAMESPACE,
)
BUSY_REFUSALS: Final = Counter(
    "tunnel_busy_refusals",
    "Requests refused with 429 because their client had as many in flight as it takes.",
    namespace=NAMESPACE,
)


def watch_hub(hub: Hub) -> None:
    """Read the gauges from `hub` at scrape time (in the listener's thread: hence the copies,
    which CPython makes without letting the event loop change the dict halfway)."""
    SOCKETS_ONLINE.set_function(lambda: sum(len(s) for s in list(hub.sockets.values())))
    TUNNELS_ONLINE.set_function(lambda: sum(1 for s in list(hub.sockets.values()) if s))
    STREAMS_IN_FLIGHT.set_function(
        lambda: sum(len(c.streams) for s in list(hub.sockets.values()) for c in list(s))
    )
