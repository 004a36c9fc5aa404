"""OpenTelemetry setup and W3C trace-context propagation through NATS headers."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Final

from opentelemetry import context, propagate, trace
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

EXPORTERS: Final = frozenset({"console", "otlp"})
TRACEPARENT: Final = "traceparent"
_enabled = False
_OTLP_ENDPOINTS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def chosen_exporters(setting: str = "none", environ: Mapping[str, str] = os.environ) -> list[str]:
    """Where spans go: `BYOROUTER_OTEL_EXPORTER` if set, else the standard OTEL_* variables.

    `OTEL_TRACES_EXPORTER` (comma-separated: otlp, console, none) is read as the OpenTelemetry
    SDKs read it, and an OTLP endpoint alone also means otlp. Unlike the SDKs' default (otlp
    to localhost), nothing configured means no spans at all: a router nobody asked to trace
    pays nothing for it. `OTEL_SDK_DISABLED=true` turns everything off.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = setting
    if names.strip().lower() in ("", "none"):
        names = environ.get("OTEL_TRACES_EXPORTER", "")
        if not names.strip() and any(environ.get(name) for name in _OTLP_ENDPOINTS):
            names = "otlp"
    chosen = [name.strip().lower() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in EXPORTERS and name != "none"]
    if unknown:
        raise ValueError(f"unknown OpenTelemetry exporter {unknown[0]!r}")
    return [name for name in chosen if name in EXPORTERS]


def setup_tracing(
    service: str,
    exporter: str = "none",
    *,
    version: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> TracerProvider | None:
    """Install the SDK tracer provider when spans go somewhere (`chosen_exporters`).

    With no exporter the API's no-op tracer stays: spans then cost nothing on the hot path, and
    an incoming `traceparent` is still carried across every hop unchanged. OTLP goes over
    HTTP/protobuf through a batch processor; its endpoint, headers, timeout, the sampler
    (`OTEL_TRACES_SAMPLER`) and the batch sizes (`OTEL_BSP_*`) come from the standard
    variables. Every exported span is redacted like a log line first.
    """
    exporters = chosen_exporters(exporter, environ)
    if not exporters:
        return None
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
    trace.set_tracer_provider(provider)
    global _enabled
    _enabled = True
    return provider


def tracing_enabled() -> bool:
    """True once `setup_tracing` installed an exporting SDK: a hot path may skip spans if not."""
    return _enabled


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


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add `traceparent` (and `tracestate`) of the current span to outgoing NATS headers."""
    propagate.inject(headers)
    return headers


def extract_context(headers: Mapping[str, str] | None) -> context.Context:
    return propagate.extract(dict(headers or {}))
