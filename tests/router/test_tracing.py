"""The router's spans with tracing off: none are made, yet a caller's trace goes on to keystore."""

from __future__ import annotations

from opentelemetry import trace

from byorouter_common.telemetry import inject_headers, tracing_enabled
from byorouter_router.fallback import Candidate
from byorouter_router.tracing import OFF, traced_request

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def test_with_tracing_off_a_callers_traceparent_reaches_the_calls_the_router_makes() -> None:
    assert not tracing_enabled()
    with traced_request("chat", {"traceparent": TRACEPARENT}, "req_1") as traced:
        # What `Bus.request` sends keystore for this request.
        sent = inject_headers({})
        assert traced is OFF
        with traced.attempt(Candidate("openai", "gpt-4o-mini"), "openai"):
            assert inject_headers({})["traceparent"].split("-")[1] == TRACE_ID
    assert sent["traceparent"].split("-")[1] == TRACE_ID
    # Nothing of the request's trace stays current after it.
    assert not trace.get_current_span().get_span_context().is_valid


def test_with_tracing_off_and_no_caller_trace_nothing_is_sent_on() -> None:
    with traced_request("chat", {"Byo-Request-Id": "req_2"}, "req_2") as traced:
        assert traced is OFF
        assert "traceparent" not in inject_headers({})
