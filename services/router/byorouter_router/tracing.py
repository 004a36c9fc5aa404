"""The router's spans: one per request ("chat gpt-4o-mini"), one child per upstream attempt.

Attributes follow the OpenTelemetry GenAI semantic conventions (`gen_ai.*`, decision 0022) plus
our `byorouter.*`. None holds a key, a prompt or a completion: only names, ids, counts and
outcomes. With tracing off (or the request not sampled) `traced_request` gives `OFF`, whose
methods do nothing, so no span is started and no attribute built on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Final

from opentelemetry import context, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from byorouter_common.contracts.events import UsageEvent
from byorouter_common.errors import ByoError
from byorouter_common.telemetry import TRACEPARENT, extract_context, tracing_enabled
from byorouter_router.credentials import ConnectionCredentials
from byorouter_router.fallback import APP_DEFAULT, Candidate
from byorouter_router.providers.base import Operation

tracer = trace.get_tracer("byorouter.router")

# gen_ai.operation.name: a Responses call is a chat turn as far as the conventions go.
_GEN_AI_OPERATION: Final[Mapping[Operation, str]] = {
    "chat": "chat",
    "embeddings": "embeddings",
    "responses": "chat",
}


def provider_kind(connection: ConnectionCredentials, candidate: Candidate) -> str:
    """gen_ai.provider.name: the app's default goes by the kind of provider it is."""
    if candidate.provider == APP_DEFAULT and connection.app_default is not None:
        return connection.app_default.provider
    return candidate.provider


def traced_request(
    operation: Operation, headers: Mapping[str, str] | None, request_id: str
) -> contextlib.AbstractContextManager[RequestTrace]:
    """The router's span of one request, a child of the caller's (`traceparent` header).

    With tracing off no span is started at all (a no-op one costs a few microseconds); a
    caller's `traceparent` is still made current, so keystore calls carry it on.
    """
    if tracing_enabled():
        return _recorded(operation, headers, request_id)
    if headers and TRACEPARENT in headers:
        return _carried(headers)
    return _UNTRACED


@contextlib.contextmanager
def _recorded(
    operation: Operation, headers: Mapping[str, str] | None, request_id: str
) -> Iterator[RequestTrace]:
    # Named by the operation until the model is known ("chat", then "chat gpt-4o-mini").
    with tracer.start_as_current_span(
        _GEN_AI_OPERATION[operation],
        context=extract_context(headers) if headers else None,
        kind=SpanKind.SERVER,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        if span.is_recording():
            span.set_attribute("gen_ai.operation.name", _GEN_AI_OPERATION[operation])
            span.set_attribute("byorouter.operation", operation)
            span.set_attribute("byorouter.request_id", request_id)
            yield RequestTrace(span, operation)
        else:
            yield OFF


@contextlib.contextmanager
def _carried(headers: Mapping[str, str]) -> Iterator[RequestTrace]:
    token = context.attach(extract_context(headers))
    try:
        yield OFF
    finally:
        context.detach(token)


class RequestTrace:
    """What the spans of one recording request need to know across its attempts."""

    __slots__ = ("_last_end", "_operation", "_requested", "attempts", "span")

    def __init__(self, span: Span, operation: Operation) -> None:
        self.span = span
        self._operation = operation
        self._requested: Candidate | None = None
        self._last_end: float | None = None
        self.attempts = 0

    def asked(
        self, app_id: str, connection_id: str, requested: Candidate, kind: str, stream: bool
    ) -> None:
        """The request as the app sent it: who, which provider and model, streamed or not."""
        self._requested = requested
        span = self.span
        span.update_name(f"{_GEN_AI_OPERATION[self._operation]} {requested.model}")
        span.set_attribute("byorouter.app_id", app_id)
        span.set_attribute("byorouter.connection_id", connection_id)
        span.set_attribute("byorouter.provider", requested.provider)
        span.set_attribute("byorouter.model", requested.model)
        span.set_attribute("gen_ai.provider.name", kind)
        span.set_attribute("gen_ai.request.model", requested.model)
        span.set_attribute("gen_ai.request.stream", stream)

    def served(self, served: Candidate, kind: str, usage: UsageEvent) -> None:
        """Who answered, after how many upstream calls, and the tokens it reported."""
        span = self.span
        span.set_attribute("byorouter.served_by", served.provider)
        span.set_attribute("byorouter.attempts", self.attempts)
        span.set_attribute(
            "byorouter.fallback",
            self._requested is not None and served.provider != self._requested.provider,
        )
        span.set_attribute("gen_ai.provider.name", kind)
        span.set_attribute("gen_ai.response.model", served.model)
        span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)

    def failed(self, code: str) -> None:
        span = self.span
        span.set_status(Status(StatusCode.ERROR, code))
        span.set_attribute("error.type", code)
        span.set_attribute("byorouter.error_code", code)
        if self.attempts:
            span.set_attribute("byorouter.attempts", self.attempts)

    @contextlib.contextmanager
    def attempt(self, candidate: Candidate, kind: str) -> Iterator[None]:
        """One upstream call ("attempt openai"): its model, how long it waited, how it ended."""
        self.attempts += 1
        began = time.monotonic()
        with tracer.start_as_current_span(
            f"attempt {candidate.provider}",
            kind=SpanKind.CLIENT,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            span.set_attribute("byorouter.attempt", self.attempts)
            span.set_attribute("byorouter.provider", candidate.provider)
            span.set_attribute("gen_ai.operation.name", _GEN_AI_OPERATION[self._operation])
            span.set_attribute("gen_ai.provider.name", kind)
            span.set_attribute("gen_ai.request.model", candidate.model)
            if self._last_end is not None:
                # The retry's wait (backoff, Retry-After) and the chain's own work before it.
                span.set_attribute("byorouter.waited_s", round(began - self._last_end, 3))
            try:
                yield
            except ByoError as error:
                span.set_status(Status(StatusCode.ERROR, error.code))
                span.set_attribute("byorouter.outcome", "error")
                span.set_attribute("error.type", error.code)
                span.set_attribute("http.response.status_code", error.status)
                raise
            except asyncio.CancelledError:
                span.set_attribute("byorouter.outcome", "cancelled")
                raise
            except Exception as error:
                span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
                span.set_attribute("byorouter.outcome", "error")
                span.set_attribute("error.type", type(error).__qualname__)
                raise
            else:
                span.set_attribute("byorouter.outcome", "ok")
            finally:
                self._last_end = time.monotonic()


class _NotRecording(RequestTrace):
    """The `RequestTrace` of a request nobody traces: every method returns at once."""

    __slots__ = ()

    def asked(
        self, app_id: str, connection_id: str, requested: Candidate, kind: str, stream: bool
    ) -> None:
        return

    def served(self, served: Candidate, kind: str, usage: UsageEvent) -> None:
        return

    def failed(self, code: str) -> None:
        return

    def attempt(self, candidate: Candidate, kind: str) -> contextlib.nullcontext[None]:  # type: ignore[override]
        return _NOTHING


_NOTHING: Final = contextlib.nullcontext()
OFF: Final = _NotRecording(trace.INVALID_SPAN, "chat")
_UNTRACED: Final = contextlib.nullcontext(OFF)
