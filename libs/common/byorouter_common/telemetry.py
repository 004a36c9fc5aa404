"""OpenTelemetry setup and W3C trace-context propagation through NATS headers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from opentelemetry import context, propagate, trace

# The SDK (and psutil, which its resources load) is imported only when spans go somewhere
# (byorouter_common.span_export): a service that exports nothing stays 1.5 MiB smaller.
if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

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
    from byorouter_common.span_export import exporting_provider

    provider = exporting_provider(service, exporters, version=version, environ=environ)
    trace.set_tracer_provider(provider)
    global _enabled
    _enabled = True
    return provider


def tracing_enabled() -> bool:
    """True once `setup_tracing` installed an exporting SDK: a hot path may skip spans if not."""
    return _enabled


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add `traceparent` (and `tracestate`) of the current span to outgoing NATS headers."""
    propagate.inject(headers)
    return headers


def extract_context(headers: Mapping[str, str] | None) -> context.Context:
    return propagate.extract(dict(headers or {}))
