"""Every failure the gateway answers, in OpenAI's error shape plus `status`, never echoing input.

`ByoError` from any service, FastAPI's request validation, unknown routes and methods all end up
as `{"error": {"message", "type", "code", "param", "status"}}` with the matching HTTP status.
"""

from __future__ import annotations

import math
from typing import Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match

from byorouter_common import errors
from byorouter_common.errors import ByoError

JSON: Final = b"application/json"
# The openai SDK retries 408, 409, 429 and 5xx by default; other client errors will not get
# better by retrying, and this header tells the SDK so.
_RETRYABLE_CLIENT_ERRORS: Final = frozenset((408, 409, 429))
_NO_RETRY: Final = (b"x-should-retry", b"false")

_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_ROUTE_ERRORS: Final = {
    404: ("not_found", "Unknown API route."),
    405: ("method_not_allowed", "This route does not accept that HTTP method."),
}


def error_headers(error: ByoError, body_length: int) -> list[tuple[bytes, bytes]]:
    """Raw ASGI headers for an error response, shared by the handlers and the stream relay."""
    headers = [(b"content-type", JSON), (b"content-length", str(body_length).encode())]
    if error.retry_after is not None:
        # Retry-After is whole seconds (RFC 9110); round up so a client never retries early.
        headers.append((b"retry-after", str(max(0, math.ceil(error.retry_after))).encode()))
    if 400 <= error.status < 500 and error.status not in _RETRYABLE_CLIENT_ERRORS:
        headers.append(_NO_RETRY)
    return headers


class ErrorResponse(Response):
    """The error envelope of `error` as a JSON response with its status and retry hints."""

    def __init__(self, error: ByoError) -> None:
        self.status_code = error.status
        self.background = None
        self.body = error.to_json()
        self.raw_headers = error_headers(error, len(self.body))


def validation_error(exc: RequestValidationError) -> ByoError:
    # Name the field and what is wrong with it, but never the rejected value: it may be a key.
    details = exc.errors()
    if not details:
        return errors.bad_request("Invalid request.")
    first = details[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "request"
    return errors.bad_request(f"Invalid request: {where}: {first.get('msg', 'invalid value')}.")


async def _on_byo_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ByoError)
    return ErrorResponse(exc)


async def _on_validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return ErrorResponse(validation_error(exc))


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code, message = _ROUTE_ERRORS.get(exc.status_code, ("http_error", "Request failed."))
    error = ByoError(exc.status_code, code, message)
    response = ErrorResponse(error)
    if exc.status_code == 405:
        response.raw_headers.append((b"allow", _allowed_methods(request).encode()))
    return response


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path: Starlette's own `Allow` names only the
    first route's, and GET and DELETE of one path are two routes."""
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ByoError, _on_byo_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_exception)
