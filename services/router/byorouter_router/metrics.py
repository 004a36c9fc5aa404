"""The router's metrics and its access line: one `RequestRecord` per request it answers.

Labels are providers (the router's own few), model names capped by `MODEL` (the first 50 seen,
then `other`: a self-hosted model may be called anything), operations and outcomes (error
codes). Never a connection, app or request id: those are in the access line and the trace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from byorouter_common.contracts.events import UsageEvent
from byorouter_common.errors import ByoError
from byorouter_common.metrics import (
    LATENCY_BUCKETS,
    NAMESPACE,
    Bounded,
    Children,
    outcome_label,
)
from byorouter_router.fallback import Candidate

access_log = logging.getLogger("byorouter.access")

PROVIDER: Final = Bounded(16)
MODEL: Final = Bounded(50)

REQUESTS: Final = Children(
    Counter(
        "router_requests",
        "Requests the router answered, by operation, provider and model that served (or were "
        "asked for, if none did) and outcome (ok or the error code).",
        ["operation", "provider", "model", "outcome"],
        namespace=NAMESPACE,
    )
)
UPSTREAM_SECONDS: Final = Children(
    Histogram(
        "router_upstream_seconds",
        "One upstream call, until its answer ended or it failed, by provider.",
        ["provider"],
        namespace=NAMESPACE,
        buckets=LATENCY_BUCKETS,
    )
)
FIRST_TOKEN_SECONDS: Final = Children(
    Histogram(
        "router_time_to_first_token_seconds",
        "From the request reaching the router to the first chunk (or the whole answer) sent "
        "back, by the provider that served it; retries and fallbacks included.",
        ["provider"],
        namespace=NAMESPACE,
        buckets=LATENCY_BUCKETS,
    )
)
TOKENS: Final = Children(
    Counter(
        "router_tokens",
        "Tokens the providers reported (or the router estimated), by provider and direction.",
        ["provider", "direction"],
        namespace=NAMESPACE,
    )
)
RETRIES: Final = Children(
    Counter(
        "router_retries",
        "Upstream calls that asked a provider and model this request had asked already.",
        ["provider"],
        namespace=NAMESPACE,
    )
)
FALLBACKS: Final = Children(
    Counter(
        "router_fallbacks",
        "Moves from one provider to the next within a request, by the provider left and the one "
        "tried next.",
        ["from_provider", "to_provider"],
        namespace=NAMESPACE,
    )
)
UPSTREAM_ERRORS: Final = Children(
    Counter(
        "router_upstream_errors",
        "Upstream calls that failed, by provider and error code (rate_limited, "
        "upstream_timeout, provider_auth_failed, ...).",
        ["provider", "type"],
        namespace=NAMESPACE,
    )
)
IN_FLIGHT: Final = Gauge(
    "router_streams_in_flight",
    "Requests the router is answering now (each is a reply stream to its caller).",
    namespace=NAMESPACE,
)
COOLDOWNS: Final = Children(
    Counter(
        "router_cooldowns",
        "Times a provider was put in cooldown (skipped for a while after failing), by provider.",
        ["provider"],
        namespace=NAMESPACE,
    )
)
COOLING_DOWN: Final = Children(
    Gauge(
        "router_cooling_down",
        "Cooldowns in force now, by provider.",
        ["provider"],
        namespace=NAMESPACE,
    )
)


def cooldown_started(provider: str) -> None:
    """A provider was put in cooldown: counted, and counted as in force until it ends."""
    label = PROVIDER(provider)
    COOLDOWNS(label).inc()
    COOLING_DOWN(label).inc()


def cooldown_ended(provider: str) -> None:
    COOLING_DOWN(PROVIDER(provider)).dec()


def count_in_flight(in_flight: Callable[[], int]) -> None:
    """Read the number of requests in flight when scraped (nothing to update per request)."""
    IN_FLIGHT.set_function(in_flight)


def count_tokens(provider: str, usage: UsageEvent) -> None:
    label = PROVIDER(provider)
    if usage.prompt_tokens:
        TOKENS(label, "input").inc(usage.prompt_tokens)
    if usage.completion_tokens:
        TOKENS(label, "output").inc(usage.completion_tokens)


class _UpstreamCall:
    """Times one upstream call and counts its failure by provider and error code."""

    __slots__ = ("_began", "_provider")

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._began = 0.0

    def __enter__(self) -> None:
        self._began = time.perf_counter()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        _: TracebackType | None,
    ) -> None:
        UPSTREAM_SECONDS(self._provider).observe(time.perf_counter() - self._began)
        if isinstance(error, ByoError):
            UPSTREAM_ERRORS(self._provider, outcome_label(error.code)).inc()


class RequestRecord:
    """One request's metrics and its access line: what was asked, each attempt, the outcome."""

    __slots__ = ("_began", "_last", "_tried", "attempts", "operation", "request_id", "served")

    def __init__(self, operation: str, request_id: str) -> None:
        self._began = time.perf_counter()
        self.operation = operation
        self.request_id = request_id
        self.attempts = 0
        self._last: Candidate | None = None
        self._tried: tuple[Candidate, ...] = ()
        self.served: Candidate | None = None

    def asked(self, requested: Candidate) -> None:
        self._last = requested

    def attempt(self, candidate: Candidate) -> _UpstreamCall:
        """Upstream call number `attempts`: after the first, a retry of a candidate tried
        before in this request, or a fallback from the last one to a new one."""
        self.attempts += 1
        provider = PROVIDER(candidate.provider)
        last = self._last
        if self.attempts > 1 and last is not None:
            if candidate in self._tried:
                RETRIES(provider).inc()
            else:
                FALLBACKS(PROVIDER(last.provider), provider).inc()
        self._last = candidate
        self._tried += (candidate,)
        return _UpstreamCall(provider)

    def answered(self, served: Candidate, first_output: float | None) -> None:
        """Who served it, and when (`perf_counter`) its first chunk or answer went back."""
        self.served = served
        if first_output:
            FIRST_TOKEN_SECONDS(PROVIDER(served.provider)).observe(first_output - self._began)

    def finish(self, failure: str | None) -> None:
        """Count the request and write its access line (never a key, prompt or answer)."""
        elapsed_ms = (time.perf_counter() - self._began) * 1000
        outcome = "ok" if failure is None else outcome_label(failure)
        candidate = self.served or self._last
        provider = candidate.provider if candidate is not None else None
        model = candidate.model if candidate is not None else None
        REQUESTS(self.operation, PROVIDER(provider), MODEL(model), outcome).inc()
        access_log.info(
            "%s %s %s %.1fms",
            self.operation,
            provider or "-",
            outcome,
            elapsed_ms,
            extra={
                "request_id": self.request_id,
                "operation": self.operation,
                "provider": provider,
                "model": model,
                "attempts": self.attempts,
                "outcome": outcome,
                "duration_ms": round(elapsed_ms, 3),
            },
        )
