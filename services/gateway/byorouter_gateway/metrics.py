"""The gateway's own metrics; requests by route, method and status are the common HTTP ones."""

from __future__ import annotations

from typing import Final

from prometheus_client import Gauge

from byorouter_common.metrics import NAMESPACE

STREAMS_IN_FLIGHT: Final = Gauge(
    "gateway_streams_in_flight",
    "Router replies the gateway is relaying to clients now (streamed or whole answers).",
    namespace=NAMESPACE,
)
