"""OpenTelemetry setup and W3C trace-context propagation through NATS headers."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)

from byorouter_common.redact import redact


def setup_tracing(service: str, exporter: str = "none") -> None:
    """Install the SDK tracer provider when spans go somewhere.

    With no exporter the API's no-op tracer stays: spans then cost nothing on the hot path, and
    an incoming `traceparent` is still carried across every hop unchanged.
    """
    if exporter in ("none", ""):
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"byorouter-{service}"}))
    if exporter == "console":
        # Spans are formatted as JSON and redacted like log lines before they are written.
        provider.add_span_processor(
            SimpleSpanProcessor(ConsoleSpanExporter(formatter=lambda s: redact(s.to_json()) + "\n"))
        )
    else:
        raise ValueError(f"unknown OpenTelemetry exporter {exporter!r}")
    trace.set_tracer_provider(provider)
    _ = BatchSpanProcessor  # exported for operators who wire their own exporter


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add `traceparent` (and `tracestate`) of the current span to outgoing NATS headers."""
    propagate.inject(headers)
    return headers


def extract_context(headers: Mapping[str, str] | None) -> context.Context:
    return propagate.extract(dict(headers or {}))
