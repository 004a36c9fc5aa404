"""POST /v1/embeddings: OpenAI embeddings through the user's OpenAI-compatible provider."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from byorouter_common import errors
from byorouter_common.contracts import router as rt
from byorouter_gateway.api.schemas import APP_ERRORS
from byorouter_gateway.deps import CONNECTION_HEADER, CONNECTION_ID
from byorouter_gateway.passthrough import relay, request_object

router = APIRouter(tags=["embeddings"])

_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "input"],
    "additionalProperties": True,
    "properties": {
        "model": {
            "type": "string",
            "minLength": 1,
            "description": "Provider-prefixed embedding model id: `openai/text-embedding-3-small`, "
            "`openrouter/<vendor>/<model>`, `selfhosted/<model>`. Anthropic has no embeddings.",
        },
        "input": {
            "description": "A string or a list of strings (or token arrays) to embed.",
            "anyOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1}],
        },
    },
}


def check_embeddings_body(raw: bytes) -> bool:
    """Never a stream; `ByoError` 400 for a body without a model or an input."""
    body = request_object(raw)
    value = body.get("input")
    if not (isinstance(value, str) and value) and not (isinstance(value, list) and value):
        raise errors.bad_request(
            "`input` is required: a non-empty string or list to embed.", param="input"
        )
    if body.get("stream") is not None:
        raise errors.bad_request("Embeddings are not streamed; leave out `stream`.", param="stream")
    return False


@router.post(
    "/v1/embeddings",
    summary="Create embeddings through the user's own provider",
    response_class=Response,
    responses={
        200: {"description": "OpenAI's embeddings list (`object: list`, `data`, `usage`)."},
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
async def create_embeddings(request: Request) -> Response:
    return await relay(request, rt.EMBEDDINGS, check_embeddings_body)
