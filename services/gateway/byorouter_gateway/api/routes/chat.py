"""POST /v1/chat/completions: check just enough of the body, hand it on, relay the answer.

The hot path: an app key found in the cache, one orjson parse, one bus publish, then the router's
reply stream straight to the client. The body is never re-serialized or modelled with pydantic.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from byorouter_common import errors
from byorouter_common.contracts import HDR_REQUEST_ID
from byorouter_common.contracts import router as rt
from byorouter_gateway.api.schemas import (
    APP_ERRORS,
    ChatCompletion,
    ChatCompletionRequest,
    inline_schema,
)
from byorouter_gateway.deps import (
    CONNECTION_HEADER,
    CONNECTION_ID,
    admitted_connection_id,
    app_principal,
    bus_of,
    gateway_of,
    read_body,
)
from byorouter_gateway.middleware import bus_request_id, request_id_of
from byorouter_gateway.sse import ChatRelay

router = APIRouter(tags=["chat"])

_SSE_EXAMPLE: Final = (
    'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,'
    '"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n'
)

# One event of the stream (OpenAPI 3.1 describes an event stream event by event).
_SSE_EVENT: Final = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "A `chat.completion.chunk` as JSON, an `error` object, or `[DONE]`.",
        }
    },
}


def check_chat_body(raw: bytes) -> bool:
    """Whether the client asked for a stream; `ByoError` 400 for what no provider could take."""
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
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.bad_request(
            "`messages` is required and must be a non-empty list.", param="messages"
        )
    stream = body.get("stream")
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise errors.bad_request("`stream` must be true or false.", param="stream")
    return stream


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ChatCompletion,
        "description": "The completion; with `stream: true`, server-sent events of "
        "`chat.completion.chunk` objects ending with `data: [DONE]` (an in-stream "
        '`data: {"error": ...}` instead means the answer is incomplete).',
        "content": {"text/event-stream": {"schema": _SSE_EVENT, "example": _SSE_EXAMPLE}},
    },
    413: {**APP_ERRORS[400], "description": "Request body too large."},
    **APP_ERRORS,
}


@router.post(
    "/v1/chat/completions",
    summary="Create a chat completion through the user's own provider",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra={
        "security": [{"AppKey": []}],
        "parameters": [
            {
                "name": CONNECTION_HEADER,
                "in": "header",
                "required": True,
                "description": "The end user's connection id to route through.",
                "schema": {"type": "string", "pattern": CONNECTION_ID.pattern},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(ChatCompletionRequest)}},
        },
    },
)
async def create_chat_completion(request: Request) -> Response:
    # The hot path calls what AppPrincipalDep, ConnectionIdDep and BusDep call, directly:
    # FastAPI's dependency solving cost ~60 µs per request here, about half the gateway's share.
    principal = await app_principal(request)
    connection_id = await admitted_connection_id(request, principal)
    bus = bus_of(request)
    raw = await read_body(request, gateway_of(request).settings.max_body_bytes)
    streaming = check_chat_body(raw)
    request_id = request_id_of(request.scope)
    # The router's cancel subject needs an id no other request has, even if a client reuses its
    # own X-Request-Id; the client's id still travels in the header for correlation.
    relay_id = bus_request_id(request.scope)
    data = rt.encode_chat_request(relay_id, principal.app_id, connection_id, raw)
    stream = await bus.stream(rt.CHAT.subject, data, headers={HDR_REQUEST_ID: request_id})
    return ChatRelay(stream, bus.nc, relay_id, streaming=streaming)
