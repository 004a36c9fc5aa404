"""The one middleware: a request id on every response, a server span, metrics, an access line.

Pure ASGI (no `BaseHTTPMiddleware`, which costs a task and a memory stream per request). It is
also the last resort for an unexpected exception: a 500 in the error envelope, with the request
id, and the traceback in the log rather than in the response.
"""

from __future__ import annotations

import logging
import os
import re
import time
from contextvars import Token
from typing import Final

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from byorouter_common import errors
from byorouter_common.access import QUIET_ROUTES, UNMATCHED, status_label
from byorouter_common.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS, method_label
from byorouter_common.telemetry import tracing_enabled
from byorouter_gateway.errors import error_headers

log = logging.getLogger(__name__)
access_log = logging.getLogger("byorouter.access")
tracer = trace.get_tracer("byorouter.gateway")

REQUEST_ID_SCOPE_KEY: Final = "byorouter.request_id"
APP_ID_SCOPE_KEY: Final = "byorouter.app_id"
CLIENT_CHOSE_ID_SCOPE_KEY: Final = "byorouter.client_chose_request_id"
_INCOMING_ID: Final = re.compile(rb"^[A-Za-z0-9_-]{1,64}$")
_X_REQUEST_ID: Final = b"x-request-id"
_TRACEPARENT: Final = b"traceparent"
# Set by the chat relay from the router's `start`: who answered, after how many upstream calls.
_PROVIDER: Final = b"x-byorouter-provider"
_ATTEMPTS: Final = b"x-byorouter-attempts"
# Status recorded when the client left before any response started (nginx's convention).
CLIENT_CLOSED: Final = 499


def new_request_id() -> str:
    # The same 32 hex digits as a uuid4's, for a quarter of its cost.
    return "req_" + os.urandom(16).hex()


def request_id_of(scope: Scope) -> str:
    """The id the client sees in `x-request-id`: its own `X-Request-Id` if well-formed."""
    request_id: str = scope[REQUEST_ID_SCOPE_KEY]
    return request_id


def bus_request_id(scope: Scope) -> str:
    """An id for this request that no other request has: ours, or a fresh one if the client
    chose the visible id (clients reuse ids, and the router cancels by id)."""
    if scope.get(CLIENT_CHOSE_ID_SCOPE_KEY):
        return new_request_id()
    return request_id_of(scope)


def _server_span(
    method: str, traceparent: bytes | None, request_id: str
) -> tuple[trace.Span, Token[context.Context] | None]:
    """The request's server span, made current; none at all when tracing is off and the client
    sent no `traceparent` (a no-op span and its context cost ~10 us a request here)."""
    if traceparent is None and not tracing_enabled():
        return trace.INVALID_SPAN, None
    parent = (
        propagate.extract({"traceparent": traceparent.decode("latin-1")})
        if traceparent is not None
        else None
    )
    span = tracer.start_span(method, context=parent, kind=SpanKind.SERVER)
    if span.is_recording():  # with tracing off, not even the attributes are built
        span.set_attribute("http.request.method", method)
        span.set_attribute("byorouter.request_id", request_id)
    return span, context.attach(trace.set_span_in_context(span))


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, access_log_enabled: bool = True) -> None:
        self.app = app
        self.access_log_enabled = access_log_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming_id = traceparent = None
        for name, value in scope["headers"]:
            if name == _X_REQUEST_ID:
                incoming_id = value
            elif name == _TRACEPARENT:
                traceparent = value
        if incoming_id is not None and _INCOMING_ID.match(incoming_id):
            request_id = incoming_id.decode()
            scope[CLIENT_CHOSE_ID_SCOPE_KEY] = True
        else:
            request_id = new_request_id()
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        request_id_header = (_X_REQUEST_ID, request_id.encode())
        status = 0
        served_by: bytes | None = None
        attempts: bytes | None = None

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, served_by, attempts
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", ())
                for name, value in headers:
                    if name == _PROVIDER:
                        served_by = value
                    elif name == _ATTEMPTS:
                        attempts = value
                message["headers"] = [*headers, request_id_header]
            await send(message)

        span, token = _server_span(scope["method"], traceparent, request_id)
        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception as exc:
            log.exception("unhandled error", extra={"request_id": request_id})
            span.record_exception(exc)
            if status == 0:
                error = errors.internal()
                body = error.to_json()
                await send_with_request_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": error_headers(error, len(body)),
                    }
                )
                await send({"type": "http.response.body", "body": body, "more_body": False})
        finally:
            if token is not None:
                context.detach(token)
            self._finish(scope, span, status or CLIENT_CLOSED, started, served_by, attempts)

    def _finish(
        self,
        scope: Scope,
        span: trace.Span,
        status: int,
        started: float,
        served_by: bytes | None,
        attempts: bytes | None,
    ) -> None:
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        path_format: str | None = getattr(route, "path_format", None)
        app_id: str | None = scope.get(APP_ID_SCOPE_KEY)
        if span.is_recording():
            if path_format is not None:
                span.update_name(f"{scope['method']} {path_format}")
                span.set_attribute("http.route", path_format)
            span.set_attribute("http.response.status_code", status)
            if app_id is not None:
                span.set_attribute("byorouter.app_id", app_id)
            if status >= 500:
                span.set_status(StatusCode.ERROR)
            span.end()
        # The route template, never the raw path or query: they may carry ids or secrets.
        template = path_format or UNMATCHED
        method = method_label(scope["method"])
        HTTP_REQUESTS(template, method, status_label(status)).inc()
        HTTP_REQUEST_SECONDS(template).observe(elapsed)
        if self.access_log_enabled and template not in QUIET_ROUTES:
            access_log.info(
                "%s %s %d %.1fms",
                method,
                template,
                status,
                elapsed * 1000,
                extra={
                    "method": method,
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "request_id": scope[REQUEST_ID_SCOPE_KEY],
                    "app_id": app_id,
                    "provider": served_by.decode() if served_by is not None else None,
                    "attempts": int(attempts) if attempts is not None else None,
                },
            )
