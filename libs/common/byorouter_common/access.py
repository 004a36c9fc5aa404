"""One access line and the HTTP request metrics per request, for Connect and the tunnel service.

Pure ASGI, outermost: the route is the matched template (`/manage/{session}` rather than the
path, which may carry an id or a one-time code), never the query string. The gateway has its
own middleware (request ids, spans) that writes the same line and the same metrics.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from byorouter_common.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS, method_label

access_log = logging.getLogger("byorouter.access")

# A request no route matched: one label for every scanner's guess.
UNMATCHED: Final = "unmatched"
# Probes every few seconds are not worth a line each (they are still counted).
QUIET_ROUTES: Final = frozenset({"/healthz", "/readyz"})
# Nginx's convention for a client that left before any response started.
CLIENT_CLOSED: Final = 499
_X_REQUEST_ID: Final = b"x-request-id"
_INCOMING_ID: Final = re.compile(rb"^[A-Za-z0-9_-]{1,64}$")
_STATUS: Final = {code: str(code) for code in range(100, 600)}


def status_label(status: int) -> str:
    return _STATUS.get(status) or str(status)


def route_of(scope: Scope) -> str:
    """The template of the route that served `scope` (set by the router), or `unmatched`."""
    path_format: str | None = getattr(scope.get("route"), "path_format", None)
    return path_format or UNMATCHED


class AccessMiddleware:
    """Counts and times every HTTP request, and writes its access line once it has ended."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        except Exception:
            # Starlette's error middleware, outside this one, answers it with a 500.
            status = status or 500
            raise
        finally:
            elapsed = time.perf_counter() - started
            status = status or CLIENT_CLOSED
            route = route_of(scope)
            method = method_label(scope["method"])
            HTTP_REQUESTS(route, method, status_label(status)).inc()
            HTTP_REQUEST_SECONDS(route).observe(elapsed)
            if route not in QUIET_ROUTES:
                access_log.info(
                    "%s %s %d %.1fms",
                    method,
                    route,
                    status,
                    elapsed * 1000,
                    extra={
                        "method": method,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "request_id": _request_id(scope),
                    },
                )


def _request_id(scope: Scope) -> str:
    """The caller's X-Request-Id if well-formed (a proxy's, say), else a fresh one."""
    value: bytes
    for name, value in scope["headers"]:
        if name == _X_REQUEST_ID and _INCOMING_ID.match(value):
            return value.decode()
    return "req_" + uuid.uuid4().hex
