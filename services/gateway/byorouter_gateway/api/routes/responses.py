"""POST /v1/responses: OpenAI's Responses API, passed through to the user's OpenAI-compatible
provider natively (never converted to chat), streamed with its `event:` names."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from byorouter_common.contracts import router as rt
from byorouter_gateway.api.schemas import APP_ERRORS
from byorouter_gateway.deps import CONNECTION_HEADER, CONNECTION_ID
from byorouter_gateway.passthrough import relay, request_object, wants_stream

router = APIRouter(tags=["responses"])

_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model"],
    "additionalProperties": True,
    "properties": {
        "model": {
            "type": "string",
            "minLength": 1,
            "description": "Provider-prefixed model id: `openai/gpt-4o`, "
            "`openrouter/<vendor>/<model>`, `selfhosted/<model>`. Anthropic models get a 400.",
        },
        "input": {"description": "A string or a list of input items, as OpenAI defines them."},
        "stream": {"type": "boolean", "default": False},
    },
}
_SSE_EXAMPLE = (
    'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    '"delta":"Hi"}\n\nevent: response.completed\ndata: {"type":"response.completed",'
    '"response":{"status":"completed"}}\n\n'
)


def check_responses_body(raw: bytes) -> bool:
    """Whether the client asked for a stream; `ByoError` 400 for a body without a model."""
    return wants_stream(request_object(raw))


@router.post(
    "/v1/responses",
    summary="Create a response (OpenAI Responses API) through the user's own provider",
    response_class=Response,
    responses={
        200: {
            "description": "OpenAI's Response object; with `stream: true`, its server-sent "
            "events with `event:` names, ending with `response.completed` (an "
            "`event: error` instead means the answer is incomplete).",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                # OpenAPI 3.1 describes an event stream event by event.
                "text/event-stream": {
                    "schema": {
                        "type": "object",
                        "required": ["data"],
                        "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
                    },
                    "example": _SSE_EXAMPLE,
                },
            },
        },
        **APP_ERRORS,
    },
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
            "content": {"application/json": {"schema": _REQUEST_SCHEMA}},
        },
    },
)
async def create_response(request: Request) -> Response:
    return await relay(request, rt.RESPONSES, check_responses_body, named_events=True)
