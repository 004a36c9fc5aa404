"""The OpenAPI document, made to say what every route checks by hand.

Routes check connection and tunnel ids and the connection header themselves (a clear error code
of our own, no framework message), so FastAPI cannot know those rules; this adds them to every
operation that takes one, once, when the document is first asked for.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import FastAPI

from byorouter_common.contracts.tunnel import TUNNEL_ID_PATTERN
from byorouter_gateway.deps import CONNECTION_HEADER, CONNECTION_ID

# What the server refuses with a 400 unless it matches, by parameter name.
_PATTERNS: Final = {
    ("path", "connection_id"): CONNECTION_ID.pattern,
    ("path", "tunnel_id"): TUNNEL_ID_PATTERN,
    ("header", CONNECTION_HEADER): CONNECTION_ID.pattern,
}


def install(app: FastAPI) -> None:
    """Serve `app`'s document with the checks the routes make by hand."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        # FastAPI's own document (which it keeps in `openapi_schema`), given the rules.
        schema = FastAPI.openapi(app)
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                for parameter in operation.get("parameters", []):
                    _add_rule(parameter)
        return schema

    app.openapi = document  # type: ignore[method-assign]


def _add_rule(parameter: dict[str, Any]) -> None:
    pattern = _PATTERNS.get((str(parameter.get("in")), str(parameter.get("name", "")).lower()))
    if pattern is None:
        return
    schema = parameter.setdefault("schema", {})
    # A nullable `anyOf` (an optional header) becomes the plain string the route insists on.
    schema.pop("anyOf", None)
    schema.update({"type": "string", "pattern": pattern})
    # The route refuses a request without it (400), whatever its signature's default says.
    parameter["required"] = True
