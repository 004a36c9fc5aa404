"""The tunnel service's span of one relayed request ("tunnel relay"): ids, sizes and how it ended.

The relay only ever holds sealed bytes, so that is all a span could say: the tunnel id, how many
bytes went to the client and came back, and the outcome. With tracing off (or the
request not sampled) `relay_span` gives `UNTRACED`, whose methods do nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from byorouter_common.telemetry import extract_context, tracing_enabled

tracer = trace.get_tracer("byorouter.tunnel")


class RelaySpan:
    """The span of one stream on a client's socket, ended once when the stream ends."""

    __slots__ = ("_received", "_span")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._received = 0

    def sent(self, parts: Sequence[bytes]) -> None:
        """The sealed request went to the client, in `parts`."""
        self._span.set_attribute("byorouter.tunnel.request_bytes", sum(map(len, parts)))

    def received(self, payload: bytes) -> None:
        self._received += len(payload)

    def end(self, outcome: str) -> None:
        """`outcome` is `ok`, `cancelled` or the error code the caller got."""
        span = self._span
        if not span.is_recording():
            return  # ended already
        span.set_attribute("byorouter.tunnel.response_bytes", self._received)
        span.set_attribute("byorouter.outcome", outcome)
        if outcome not in ("ok", "cancelled"):
            span.set_status(Status(StatusCode.ERROR, outcome))
            span.set_attribute("error.type", outcome)
        span.end()


class _Untraced(RelaySpan):
    __slots__ = ()

    def sent(self, parts: Sequence[bytes]) -> None:
        return

    def received(self, payload: bytes) -> None:
        return

    def end(self, outcome: str) -> None:
        return


UNTRACED: Final[RelaySpan] = _Untraced(trace.INVALID_SPAN)


def relay_span(headers: Mapping[str, str] | None, tunnel_id: str) -> RelaySpan:
    """A span for one relayed request, a child of the router's attempt (`traceparent`)."""
    if not tracing_enabled():
        return UNTRACED
    span = tracer.start_span("tunnel relay", context=extract_context(headers), kind=SpanKind.SERVER)
    if not span.is_recording():
        return UNTRACED
    span.set_attribute("byorouter.tunnel_id", tunnel_id)
    return RelaySpan(span)
