"""Where spans go (the standard OTEL_* variables or ours), and that none leaves with a secret."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status, StatusCode

from byorouter_common.redact import REDACTED
from byorouter_common.span_export import RedactingExporter
from byorouter_common.telemetry import chosen_exporters


@pytest.mark.parametrize(
    ("setting", "environ", "expected"),
    [
        ("none", {}, []),
        ("console", {}, ["console"]),
        ("otlp", {}, ["otlp"]),
        ("none", {"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ("none", {"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
        ("none", {"OTEL_TRACES_EXPORTER": "none"}, []),
        # An endpoint alone is enough to mean OTLP.
        ("none", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ("none", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        # Ours wins over the standard variable; the SDK's kill switch over both.
        ("console", {"OTEL_TRACES_EXPORTER": "otlp"}, ["console"]),
        ("console", {"OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_exporter_is_chosen_from_our_setting_or_the_standard_variables(
    setting: str, environ: dict[str, str], expected: list[str]
) -> None:
    assert chosen_exporters(setting, environ) == expected


def test_an_unknown_exporter_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="zipkin"):
        chosen_exporters("none", {"OTEL_TRACES_EXPORTER": "zipkin"})


class Keeping(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def test_exported_spans_carry_no_secret_in_name_attributes_events_or_status() -> None:
    kept = Keeping()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedactingExporter(kept)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("call sk-proj-abcdefghijklmnop") as span:
        span.set_attribute("url", "https://api.example/v1?key=AIzaSyA-secret-value")
        span.set_attribute("byorouter.api_key", "anything at all")
        span.set_attribute("headers", ["Authorization: Bearer byo_sk_0123456789abcdef", "ok"])
        span.set_attribute("gen_ai.usage.input_tokens", 12)
        span.add_event("retry", {"reason": "rejected key sk-ant-0123456789abcdef"})
        span.set_status(Status(StatusCode.ERROR, "upstream said sk-or-0123456789abcdef is wrong"))

    (exported,) = kept.spans
    text = repr(
        (exported.name, dict(exported.attributes or {}), exported.status.description)
    ) + repr([(e.name, dict(e.attributes or {})) for e in exported.events])
    for secret in ("sk-proj-abc", "AIzaSyA", "anything at all", "byo_sk_0123", "sk-ant-", "sk-or-"):
        assert secret not in text
    attributes = dict(exported.attributes or {})
    assert attributes["byorouter.api_key"] == REDACTED
    assert attributes["gen_ai.usage.input_tokens"] == 12
    assert attributes["headers"] == ("Authorization: [REDACTED] [REDACTED]", "ok")
    # Identity is kept: the redacted copy is still the same span of the same trace.
    assert exported.context is not None
    assert exported.context.trace_id == span.get_span_context().trace_id
