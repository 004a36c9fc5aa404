"""Where spans go once tracing is on: the SDK tracer provider and the redacting exporter.

Imported by `telemetry.setup_tracing` only when an exporter is configured, so a service that
exports nothing never loads the OpenTelemetry SDK.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Status

from byorouter_common.redact import REDACTED, is_secret_field, redact


def exporting_provider(
    service: str,
    exporters: Sequence[str],
    *,
    version: str | None,
    environ: Mapping[str, str],
) -> TracerProvider:
    """A tracer provider for `service` that hands its spans, redacted, to `exporters`."""
    attributes: dict[str, str] = {SERVICE_NAME: f"byorouter-{service}"}
    if version is not None:
        attributes[SERVICE_VERSION] = version
    if environ.get("OTEL_SERVICE_NAME"):
        # The operator's name wins, as in every OpenTelemetry SDK.
        del attributes[SERVICE_NAME]
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in exporters:
        if name == "console":
            # Spans are formatted as JSON and redacted like log lines before they are written.
            provider.add_span_processor(
                SimpleSpanProcessor(
                    ConsoleSpanExporter(formatter=lambda s: redact(s.to_json()) + "\n")
                )
            )
        else:
            # Imported here: a service that exports nothing never loads the exporter.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(RedactingExporter(OTLPSpanExporter())))
    return provider


class RedactingExporter(SpanExporter):
    """Hands spans to another exporter with every string in them redacted (`redact`).

    Runs on the batch processor's thread, off the request's path.
    """

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._inner.export([redacted_span(span) for span in spans])

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def redacted_span(span: ReadableSpan) -> ReadableSpan:
    """A copy of `span` whose name, attributes, events and status carry no secret."""
    status = span.status
    if status.description:
        status = Status(status.status_code, redact(status.description))
    return ReadableSpan(
        name=redact(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_redacted_attributes(span.attributes),
        events=[
            Event(event.name, _redacted_attributes(event.attributes), event.timestamp)
            for event in span.events
        ],
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _redacted_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    # Attribute names are dotted (`http.request.header.authorization`): the last part says.
    return {
        name: REDACTED if is_secret_field(name.rpartition(".")[2]) else _redacted_value(value)
        for name, value in (attributes or {}).items()
    }


def _redacted_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (tuple, list)):
        return tuple(redact(v) if isinstance(v, str) else v for v in value)
    return value
