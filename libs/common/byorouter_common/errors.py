"""The one error envelope every service and the gateway speak, and its HTTP status mapping.

On the bus a failure is `{"error": {"type", "code", "message", "status"}}`; over HTTP the gateway
returns the same object with `status` as the response status, which is OpenAI's error shape
(`{"error": {"message", "type", "code", "param"}}`) plus our `status`.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel


class ErrorBody(BaseModel):
    type: str
    code: str
    message: str
    status: int
    param: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class ByoError(Exception):
    """A failure a caller should see, carried unchanged from any service to the HTTP client."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type or _DEFAULT_TYPES.get(status, "api_error")
        self.param = param
        self.retry_after = retry_after

    def envelope(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "status": self.status,
            "param": self.param,
        }
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return {"error": body}

    def to_json(self) -> bytes:
        return orjson.dumps(self.envelope())

    @classmethod
    def from_envelope(cls, data: dict[str, Any]) -> ByoError:
        err = data.get("error") if isinstance(data, dict) else None
        if not isinstance(err, dict):
            return internal("malformed error envelope")
        retry_after = err.get("retry_after")
        return cls(
            int(err.get("status", 500)),
            str(err.get("code", "internal_error")),
            str(err.get("message", "")),
            type=str(err.get("type")) if err.get("type") else None,
            param=err.get("param"),
            retry_after=float(retry_after) if retry_after is not None else None,
        )

    @classmethod
    def from_json(cls, raw: bytes) -> ByoError:
        try:
            return cls.from_envelope(orjson.loads(raw))
        except orjson.JSONDecodeError:
            return internal("malformed error envelope")

    def __repr__(self) -> str:
        return f"ByoError({self.status}, {self.code!r}, {self.message!r})"


_DEFAULT_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def bad_request(
    message: str, *, code: str = "invalid_request", param: str | None = None
) -> ByoError:
    return ByoError(400, code, message, param=param)


def unauthorized(message: str = "Invalid or missing app API key.") -> ByoError:
    return ByoError(401, "invalid_api_key", message)


def not_found(message: str, *, code: str = "not_found") -> ByoError:
    return ByoError(404, code, message)


def too_large(message: str) -> ByoError:
    return ByoError(413, "request_too_large", message)


def rate_limited(message: str, retry_after: float | None = None) -> ByoError:
    return ByoError(429, "rate_limit_exceeded", message, retry_after=retry_after)


def internal(message: str = "Internal error.") -> ByoError:
    return ByoError(500, "internal_error", message)


def unavailable(message: str) -> ByoError:
    return ByoError(503, "service_unavailable", message)


def timeout(message: str) -> ByoError:
    return ByoError(504, "timeout", message)
