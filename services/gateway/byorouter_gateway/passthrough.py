"""Requests the router passes through to the provider as the app wrote them: embeddings and the
Responses API. Checked as little as chat is, then sent on the bus and relayed the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

from byorouter_common import errors
from byorouter_common.contracts import HDR_REQUEST_ID
from byorouter_common.contracts import router as rt
from byorouter_common.contracts.base import Endpoint
from byorouter_gateway.deps import (
    admitted_connection_id,
    app_principal,
    bus_of,
    gateway_of,
    read_body,
)
from byorouter_gateway.middleware import bus_request_id, request_id_of
from byorouter_gateway.sse import ChatRelay


def request_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object with a non-empty string `model`; `ByoError` 400 otherwise."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise errors.bad_request("Request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise errors.bad_request("Request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise errors.bad_request(
            "`model` is required and must be a non-empty string.", param="model"
        )
    return body


def wants_stream(body: dict[str, Any]) -> bool:
    stream = body.get("stream")
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise errors.bad_request("`stream` must be true or false.", param="stream")
    return stream


async def relay(
    request: Request,
    endpoint: Endpoint[Any, Any],
    check: Callable[[bytes], bool],
    *,
    named_events: bool = False,
) -> Response:
    """Authenticate, read and `check` the body (whether it asks for a stream), send it to the
    router on `endpoint` and relay the answer, as the chat route does."""
    principal = await app_principal(request)
    connection_id = await admitted_connection_id(request, principal)
    bus = bus_of(request)
    raw = await read_body(request, gateway_of(request).settings.max_body_bytes)
    streaming = check(raw)
    relay_id = bus_request_id(request.scope)
    data = rt.encode_chat_request(relay_id, principal.app_id, connection_id, raw)
    stream = await bus.stream(
        endpoint.subject, data, headers={HDR_REQUEST_ID: request_id_of(request.scope)}
    )
    return ChatRelay(stream, bus.nc, relay_id, streaming=streaming, named_events=named_events)
