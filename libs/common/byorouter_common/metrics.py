"""Prometheus metrics: the listener every service serves them on, and cheap, bounded labels.

Each process serves `GET /metrics` on its own listener (`BYOROUTER_METRICS_HOST`:
`BYOROUTER_METRICS_PORT`), never on a public API port (docs/decisions/0023). Label values are
low-cardinality by construction: routes are templates, outcomes are error codes, and anything
that comes from outside (a model name, an HTTP method) goes through `Bounded`, which caps the
distinct values and refuses ones that look like an id or a key. Per-user detail belongs in
traces and the usage API.

On the request path a metric update must cost well under a microsecond or two: `Children`
binds each label set's child once (`.labels()` validates and locks on every call) and hands the
same child back from a dict afterwards.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Final, Generic, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from byorouter_common.redact import redact

log = logging.getLogger(__name__)

NAMESPACE: Final = "byorouter"
OTHER: Final = "other"
# Request and upstream durations, seconds: from a cached answer to a long generation.
LATENCY_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
# Bus round trips, seconds: sub-millisecond on one host, up to the bus timeout.
BUS_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

M = TypeVar("M", Counter, Gauge, Histogram)


class Children(Generic[M]):
    """A labelled metric whose children are bound once per label set and then reused."""

    __slots__ = ("_children", "metric")

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


# Ids we hand out (conn_, app_, req_, tun_, ...), long hex or base64 runs, and anything the
# redactor would hide: none of these may become a label value.
# (`app_authenticate`, an endpoint, is no id: ids have a digit or a long random tail).
_ID_LIKE: Final = re.compile(
    r"(?i)^(?:conn|app|req|tun|cli|cred|usr|user|whk|key|sess|byo)_"
    r"(?:[A-Za-z0-9_\-]*[0-9]|[A-Za-z0-9_\-]{16,})|[0-9a-f]{16,}|[A-Za-z0-9_\-]{33,}"
)
_LABEL_SHAPE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+\-]{0,79}$")
_REMEMBERED_REFUSALS: Final = 4096


def looks_like_an_id(value: str) -> bool:
    """True for values that would make a label per user or per request, or leak a secret."""
    return bool(_ID_LIKE.search(value)) or redact(value) != value


class Bounded:
    """Label values from outside, capped: the first `limit` distinct ones, then `other`.

    `known` values are always kept (a catalog's models, say) and do not count to the cap. A
    value with an odd shape or that looks like an id or a key is `other` from the start.
    """

    __slots__ = ("_kept", "_lock", "_seen", "limit")

    def __init__(self, limit: int, known: Iterable[str] = ()) -> None:
        self.limit = limit
        self._seen: dict[str, str] = {value: value for value in known}
        self._kept = 0
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if value is None:
            return OTHER
        label = self._seen.get(value)
        if label is not None:
            return label
        if len(self._seen) >= self.limit + _REMEMBERED_REFUSALS:
            return OTHER  # not even a refusal is remembered past this point
        with self._lock:
            if (
                self._kept < self.limit
                and _LABEL_SHAPE.match(value)
                and not looks_like_an_id(value)
            ):
                self._kept += 1
                label = value
            else:
                label = OTHER
            self._seen[value] = label
        return label


# --- what every service measures ---------------------------------------------------------

BUS_REQUEST_SECONDS: Final = Children(
    Histogram(
        "bus_request_seconds",
        "Round trip of a request/reply call this process made on the bus, by endpoint and outcome.",
        ["endpoint", "outcome"],
        namespace=NAMESPACE,
        buckets=BUS_BUCKETS,
    )
)
BUS_HANDLED: Final = Children(
    Counter(
        "bus_handled_requests",
        "Bus requests this process answered, by endpoint and outcome (ok or the error code).",
        ["endpoint", "outcome"],
        namespace=NAMESPACE,
    )
)
BUS_HANDLED_SECONDS: Final = Children(
    Histogram(
        "bus_handled_seconds",
        "Time this process took to answer a bus request, by endpoint.",
        ["endpoint"],
        namespace=NAMESPACE,
        buckets=BUS_BUCKETS,
    )
)
HTTP_REQUESTS: Final = Children(
    Counter(
        "http_requests",
        "HTTP requests served, by route template, method and status.",
        ["route", "method", "status"],
        namespace=NAMESPACE,
    )
)
HTTP_REQUEST_SECONDS: Final = Children(
    Histogram(
        "http_request_seconds",
        "HTTP request duration until the response ended (a stream: its whole length), by route.",
        ["route"],
        namespace=NAMESPACE,
        buckets=LATENCY_BUCKETS,
    )
)
# Outcomes and error codes are ours, but a peer's could be anything: capped all the same.
outcome_label: Final = Bounded(64)
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in _METHODS else OTHER


class MetricsServer:
    """The listener serving this process's metrics; `stop` closes it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)


def serve_metrics(host: str, port: int) -> MetricsServer | None:
    """Serve Prometheus exposition on `host:port` in a thread; None if `port` is 0.

    A port already taken is logged and the service runs on without metrics: a copy that cannot
    be scraped must still answer requests.
    """
    if port == 0:
        return None
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        log.error(
            "metrics listener not started: %s",
            exc.strerror or type(exc).__name__,
            extra={"metrics_host": host, "metrics_port": port},
        )
        return None
    log.info("metrics on http://%s:%d/metrics", host, port)
    return MetricsServer(server, thread)
