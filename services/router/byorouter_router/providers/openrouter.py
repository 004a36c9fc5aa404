"""OpenRouter: the user's OpenRouter key, any `openrouter/<vendor>/<model>`, or their chosen model.

OpenRouter speaks the OpenAI Chat Completions API at https://openrouter.ai/api/v1, so this is the
OpenAI-compatible provider with OpenRouter's differences:
- every call carries the app-attribution headers `HTTP-Referer` and `X-Title`;
- `openrouter/default` asks for the model the user picked when connecting (`preferred_model`);
  OpenRouter's own ids always hold a "/" (`meta-llama/llama-3.1-8b-instruct`), so a bare
  `default` can never be one of them;
- its error body's `code` is the HTTP status as a number, 402 means the account behind the key
  is out of credits, and a 403 whose metadata lists `reasons` is its moderation refusing the
  input rather than the key;
- reasoning arrives as `reasoning` and is handed on as `reasoning_content`, like self-hosted
  servers'; `: OPENROUTER PROCESSING` keep-alive comments and the `data:` error event with
  `finish_reason: "error"` in the middle of a stream are read like any OpenAI-compatible stream's.
"""

from __future__ import annotations

from typing import Any, Final

import aiohttp
import orjson
from multidict import CIMultiDictProxy
from yarl import URL

from byorouter_common.errors import ByoError
from byorouter_router.providers.base import ProviderCredential
from byorouter_router.providers.errors import Timeouts, upstream_message
from byorouter_router.providers.openai_compat import OpenAICompatProvider
from byorouter_router.upstream import UpstreamEndpoints

OPENROUTER_BASE_URL: Final = "https://openrouter.ai/api/v1"
# What the app sends after "openrouter/" to mean "the model the user chose".
PREFERRED_MODEL_ALIAS: Final = "default"
_API_PATH: Final = "/api/v1"
_KEY_REJECTED: Final = "provider_auth_failed"


def attribution_headers(referer: str, title: str) -> dict[str, str]:
    """OpenRouter's app-attribution headers; an empty setting sends no header for it."""
    headers: dict[str, str] = {}
    if referer:
        headers["HTTP-Referer"] = referer
    if title:
        headers["X-Title"] = title
    return headers


def _metadata(raw: bytes) -> dict[str, Any]:
    try:
        parsed: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    error = parsed.get("error") if isinstance(parsed, dict) else None
    metadata = error.get("metadata") if isinstance(error, dict) else None
    return metadata if isinstance(metadata, dict) else {}


class OpenRouterProvider(OpenAICompatProvider):
    renames_reasoning = True

    def __init__(
        self,
        session: aiohttp.ClientSession,
        timeouts: Timeouts,
        *,
        allow_private: bool,
        referer: str,
        title: str,
    ) -> None:
        super().__init__(
            "openrouter",
            session,
            timeouts,
            default_base_url=OPENROUTER_BASE_URL,
            allow_private=allow_private,
            extra_headers=attribution_headers(referer, title),
        )

    def _endpoints(self, credential: ProviderCredential) -> UpstreamEndpoints:
        # A base URL given as just the origin (https://openrouter.ai) means its API under /api/v1.
        base_url = credential.base_url
        if base_url:
            try:
                bare_origin = URL(base_url.strip()).path in ("", "/")
            except (ValueError, TypeError):
                bare_origin = False  # the base class says what is wrong with it
            if bare_origin:
                credential = ProviderCredential(
                    credential.provider,
                    credential.api_key,
                    base_url.strip().rstrip("/") + _API_PATH,
                    credential.preferred_model,
                )
        return super()._endpoints(credential)

    def _upstream_model(self, credential: ProviderCredential, model: str) -> str:
        if model != PREFERRED_MODEL_ALIAS:
            return model
        if not credential.preferred_model:
            raise ByoError(
                404,
                "model_not_found",
                "This connection's OpenRouter provider has no preferred model, so "
                "openrouter/default cannot be used: ask for a model by its OpenRouter id, e.g. "
                "openrouter/meta-llama/llama-3.1-8b-instruct, or have the user pick a preferred "
                "model for OpenRouter.",
                param="model",
            )
        return credential.preferred_model

    def _status_error(self, status: int, raw: bytes, headers: CIMultiDictProxy[str]) -> ByoError:
        if status == 402:
            # Unusable until the user adds credits: reported like a rejected key, so the chain
            # falls back and the app can see (and tell the user) why.
            message, _, _ = upstream_message(raw)
            suffix = f": {message}" if message else "."
            return ByoError(
                502,
                _KEY_REJECTED,
                "The openrouter account behind the key on this connection is out of credits "
                f"(402){suffix}",
            )
        if status == 403 and "reasons" in _metadata(raw):
            # Moderation flagged the input; the metadata's flagged text is the user's and not
            # repeated here.
            return ByoError(
                400,
                "content_flagged",
                "The openrouter provider refused the request: its moderation flagged the input.",
                param="messages",
            )
        return super()._status_error(status, raw, headers)
