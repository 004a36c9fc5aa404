"""`POST /v1/chat/completions` handed straight to its route's function, past FastAPI's routing.

The chat route is the gateway's hot path, and on it FastAPI's exception, exit-stack, routing and
request-handler layers cost more CPU than the route itself (py-spy at c=16: about a fifth of the
gateway's samples, against an eighth in the route and its relay). This middleware sits innermost
of ours, inside CORS and the request context, so every request still gets its id, span, metrics,
access line and CORS headers; only the matching of this one route and the layers around a route
are skipped. The route stays registered with FastAPI: OpenAPI is built from it, and a path or
method the fast path does not take (a trailing slash, a GET) is FastAPI's as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from byorouter_common.errors import ByoError
from byorouter_gateway.errors import ErrorResponse

Endpoint = Callable[[Request], Awaitable[Response]]


class HotRoute:
    """Serves `route` (a route whose function takes only the `Request`) without the router."""

    def __init__(self, app: ASGIApp, *, route: APIRoute) -> None:
        self.app = app
        self._route = route
        self._path = route.path
        self._endpoint: Endpoint = route.endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != self._path
            or scope["method"] != "POST"
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        # What routing would have set: the request context middleware names spans, metrics and
        # access lines by the route's template.
        scope["route"] = self._route
        scope["endpoint"] = self._endpoint
        try:
            response = await self._endpoint(Request(scope, receive, send))
        except ByoError as error:
            # What the app's `ByoError` handler answers (`errors.install_error_handlers`).
            response = ErrorResponse(error)
        await response(scope, receive, send)


def hot_route(routes: Sequence[object], path: str) -> APIRoute:
    """The POST route of `path` among an app's routes."""
    for route in routes:
        if isinstance(route, APIRoute) and route.path == path and "POST" in (route.methods or ()):
            return route
    raise LookupError(f"no POST route {path}")
