"""Serving on the bus: endpoints in the service's queue group, events for caches and for records.

A handler takes and returns contract models and never raises into the broker: every failure
becomes the error envelope.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from faststream.nats import NatsBroker, NatsMessage, NatsResponse
from pydantic import ValidationError

from byorouter_common import errors
from byorouter_common.bus.discovery import Discovery
from byorouter_common.bus.streams import ERROR, RESULT
from byorouter_common.contracts import HDR_KIND, Endpoint, Event
from byorouter_common.contracts.base import Rep, Req
from byorouter_common.errors import ByoError
from byorouter_common.metrics import BUS_HANDLED, BUS_HANDLED_SECONDS, outcome_label

log = logging.getLogger("byorouter_common.bus")
# One line per bus request answered (endpoint, outcome, duration): docs/operations.md.
access_log = logging.getLogger("byorouter.access")


_DEPENDENCY_ERRORS: list[tuple[tuple[type[BaseException], ...], str]] = []


def map_dependency_errors(exceptions: tuple[type[BaseException], ...], message: str) -> None:
    """Declare that `exceptions` from this process's handlers mean a dependency it needs (its
    database, say) is down: callers then get a 503 with `message`, not an internal error."""
    _DEPENDENCY_ERRORS.append((exceptions, message))


def _dependency_error(exc: Exception) -> ByoError | None:
    for exceptions, message in _DEPENDENCY_ERRORS:
        if isinstance(exc, exceptions):
            return errors.unavailable(message)
    return None


def _validation_message(exc: ValidationError) -> str:
    # Never echo the rejected input: it may be a key.
    first = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return f"Invalid request: {where}: {first.get('msg', 'invalid value')}."


def serve(
    broker: NatsBroker,
    endpoint: Endpoint[Req, Rep],
    handler: Callable[[Req], Awaitable[Rep]],
    *,
    discovery: Discovery,
    max_workers: int = 32,
) -> None:
    """Subscribe `handler` to `endpoint` in the service's queue group.

    The handler takes and returns contract models and raises `ByoError` for failures a caller
    should see; it never raises into the broker: every failure becomes the error envelope.
    """
    name = endpoint.name
    discovery.add(name, endpoint.subject, endpoint.service, endpoint.description)
    handled_seconds = BUS_HANDLED_SECONDS(name)

    async def handle(msg: NatsMessage) -> NatsResponse:
        started = time.perf_counter_ns()
        failure: str | None = None
        try:
            request = endpoint.request.model_validate_json(msg.body)
            reply = await handler(request)
            response = NatsResponse(reply.model_dump_json().encode(), headers={HDR_KIND: RESULT})
        except ValidationError as exc:
            failure = "invalid request"
            response = _error_response(errors.bad_request(_validation_message(exc)))
        except ByoError as exc:
            failure = exc.code
            response = _error_response(exc)
        except Exception as exc:
            down = _dependency_error(exc)
            if down is not None:
                log.warning(
                    "dependency unavailable: %s",
                    down.message,
                    extra={"endpoint": endpoint.subject, "error": type(exc).__name__},
                )
                failure = down.code
                response = _error_response(down)
            else:
                log.exception("handler failed", extra={"endpoint": endpoint.subject})
                failure = "internal error"
                response = _error_response(errors.internal())
        elapsed_ns = time.perf_counter_ns() - started
        discovery.record(name, elapsed_ns, failure)
        outcome = "ok" if failure is None else outcome_label(failure)
        BUS_HANDLED(name, outcome).inc()
        handled_seconds.observe(elapsed_ns / 1e9)
        access_log.info(
            "%s %s %.1fms",
            name,
            outcome,
            elapsed_ns / 1e6,
            extra={
                "endpoint": name,
                "subject": endpoint.subject,
                "outcome": outcome,
                "duration_ms": elapsed_ns // 1000 / 1000,
            },
        )
        return response

    handle.__name__ = f"handle_{name}"
    broker.subscriber(endpoint.subject, queue=endpoint.service, max_workers=max_workers)(handle)


def _error_response(error: ByoError) -> NatsResponse:
    return NatsResponse(error.to_json(), headers={HDR_KIND: ERROR})


def subscribe_event(
    broker: NatsBroker, event: Event[Any], handler: Callable[[Any], Awaitable[None]]
) -> None:
    """Every copy receives every event (no queue group): caches must all drop stale entries."""

    async def handle(msg: NatsMessage) -> None:
        try:
            await handler(event.payload.model_validate_json(msg.body))
        except Exception:
            log.exception("event handler failed", extra={"event": event.subject})

    handle.__name__ = "on_" + event.subject.replace(".", "_")
    broker.subscriber(event.subject)(handle)


def consume_event(
    broker: NatsBroker,
    event: Event[Any],
    handler: Callable[[Any], Awaitable[None]],
    *,
    queue: str,
) -> None:
    """Exactly one copy of the `queue` group receives each event: for records, not caches.

    A report such as a request's usage must be stored once however many copies run.
    """

    async def handle(msg: NatsMessage) -> None:
        try:
            await handler(event.payload.model_validate_json(msg.body))
        except Exception:
            log.exception("event handler failed", extra={"event": event.subject})

    handle.__name__ = "consume_" + event.subject.replace(".", "_")
    broker.subscriber(event.subject, queue=queue)(handle)
