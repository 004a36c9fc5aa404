"""Checking a key before it is saved: list the provider's models and say in plain words how it went.

Connect's "Test" buttons land here (`PROVIDER_TEST`). A provider the router already speaks
lists its models itself (same pool, same SSRF guard); OpenRouter, and Anthropic on a router
without its provider, are asked directly with their own auth header. The answer is a sentence
for a person ("Key works — 42 models available", "OpenAI rejected this key (401)", "Could not
reach http://10.0.0.5:8000 (connection refused)"), never the key, and the URL shown is only the
base URL's origin.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Final

import aiohttp
import orjson
from yarl import URL

from byorouter_common.contracts.keystore import connect_flow as cn
from byorouter_common.contracts.router import ModelCard, ProviderTest, ProviderTestResult
from byorouter_common.errors import ByoError
from byorouter_router.providers.anthropic.provider import ANTHROPIC_VERSION
from byorouter_router.providers.base import Provider, ProviderCredential
from byorouter_router.providers.errors import Timeouts, status_error, transport_error
from byorouter_router.providers.http import get_model_list
from byorouter_router.upstream import endpoints_for

DISPLAY_NAMES: Final = {
    "openai": "OpenAI",
    "anthropic": "Anthropic",
    "openrouter": "OpenRouter",
    "selfhosted": "Your server",
}
# A check answers well within Connect's wait for it, whatever the provider does.
CHECK_TIMEOUT_S: Final = 10.0
# Enough for a picker; OpenRouter lists a few hundred.
MAX_LISTED_MODELS: Final = 2000
_STATUS_IN_MESSAGE: Final = re.compile(r"\((\d{3})\)")


@dataclass(frozen=True)
class DirectModelList:
    """How to list a provider's models without a router provider for it."""

    default_base_url: str
    # Path under the base URL's origin-and-prefix, e.g. /api/v1/models for OpenRouter.
    path: str
    # A base URL may already end with this prefix (https://openrouter.ai/api/v1).
    known_prefix: str
    key_header: str
    key_prefix: str
    extra_headers: tuple[tuple[str, str], ...] = ()


DIRECT: Final = {
    "openrouter": DirectModelList(
        "https://openrouter.ai", "/api/v1/models", "/api/v1", "Authorization", "Bearer "
    ),
    "anthropic": DirectModelList(
        "https://api.anthropic.com",
        "/v1/models",
        "/v1",
        "x-api-key",
        "",
        (("anthropic-version", ANTHROPIC_VERSION),),
    ),
}
DEFAULT_HOSTS: Final = {
    "openai": "api.openai.com",
    "anthropic": "api.anthropic.com",
    "openrouter": "openrouter.ai",
}
# Providers whose preferred model a person picks from the list.
_PICKS_MODEL: Final = frozenset({"openrouter"})


def _where(provider: str, base_url: str | None) -> str:
    """The part of the base URL safe to show back: its origin (no user info, path or query)."""
    if base_url:
        try:
            return cn.origin_of(base_url)
        except ValueError:
            return "that base URL"
    return DEFAULT_HOSTS.get(provider, "the server")


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in words, from the exception the provider raised it from."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectorCertificateError | ssl.SSLError):
            return "its TLS certificate was not accepted"
        if isinstance(cause, aiohttp.ClientConnectorDNSError | socket.gaierror):
            return "host name not found"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, aiohttp.ClientConnectorError):
            os_error = cause.os_error
            if isinstance(os_error, ConnectionRefusedError):
                return "connection refused"
            if isinstance(os_error, socket.gaierror):
                return "host name not found"
        cause = cause.__cause__ or cause.__context__
    return "connection failed"


def plain_words(provider: str, base_url: str | None, exc: ByoError) -> str:
    """The failure as a sentence a person understands, e.g. "OpenAI rejected this key (401)"."""
    name = DISPLAY_NAMES.get(provider, provider)
    where = _where(provider, base_url)
    if exc.code == "provider_auth_failed":
        status = _STATUS_IN_MESSAGE.search(exc.message)
        return f"{name} rejected this key ({status.group(1) if status else exc.status})"
    if exc.code == "upstream_unreachable":
        return f"Could not reach {where} ({_reason(exc)})"
    if exc.code == "upstream_timeout":
        return f"{where} did not answer in time"
    if exc.code == "upstream_not_allowed":
        return f"This BYORouter does not call private or local addresses such as {where}"
    if exc.code == "provider_misconfigured":
        return "That base URL is not a valid http(s) URL"
    if exc.code == "model_not_found":
        return f"{where} has no model list there (404): check the base URL"
    if exc.code == "upstream_rate_limited":
        return f"{name} is rate-limiting this key right now (429); try again in a minute"
    return f"{name} could not list its models: {exc.message}"


def _success(provider: str, models: list[str], *, listed: bool = False) -> ProviderTestResult:
    count = len(models)
    noun = "model" if count == 1 else "models"
    lead = "Connected" if provider == "selfhosted" else "Key works"
    return ProviderTestResult(
        ok=True,
        message=f"{lead} — {count} {noun} available",
        model_count=count,
        models=sorted(models)[:MAX_LISTED_MODELS] if listed or provider in _PICKS_MODEL else [],
    )


class CredentialChecker:
    """Answers `PROVIDER_TEST` with the router's providers once they exist (after `attach`)."""

    def __init__(self, allow_private: bool, timeouts: Timeouts) -> None:
        self._allow_private = allow_private
        self._timeouts = timeouts
        self._session: aiohttp.ClientSession | None = None
        self._providers: dict[str, Provider] = {}

    def attach(self, session: aiohttp.ClientSession, providers: dict[str, Provider]) -> None:
        self._session = session
        self._providers = providers

    async def check(self, request: ProviderTest) -> ProviderTestResult:
        key = request.api_key.get_secret_value().strip() if request.api_key is not None else ""
        base_url = (request.base_url or "").strip() or None
        if request.provider != "selfhosted" and not key:
            return ProviderTestResult(ok=False, message="Enter a key to test")
        if request.provider == "selfhosted" and not base_url:
            return ProviderTestResult(ok=False, message="Enter your server's base URL to test")
        credential = ProviderCredential(
            request.provider, request.api_key if key else None, base_url
        )
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                models = await self._list(credential)
        except ByoError as exc:
            return ProviderTestResult(
                ok=False, message=plain_words(request.provider, base_url, exc)
            )
        except TimeoutError:
            where = _where(request.provider, base_url)
            return ProviderTestResult(ok=False, message=f"{where} did not answer in time")
        return _success(request.provider, models, listed=request.list_models)

    async def _list(self, credential: ProviderCredential) -> list[str]:
        provider = self._providers.get(credential.provider)
        if provider is not None:
            cards = await provider.list_models(credential)
        else:
            cards = await self._list_directly(credential)
        prefix = f"{credential.provider}/"
        return [card.id.removeprefix(prefix) for card in cards]

    async def _list_directly(self, credential: ProviderCredential) -> list[ModelCard]:
        spec = DIRECT.get(credential.provider)
        if spec is None or self._session is None:
            raise ByoError(503, "provider_unavailable", "This router cannot test that provider.")
        url = self._direct_url(credential.provider, credential.base_url, spec)
        key = credential.api_key.get_secret_value() if credential.api_key is not None else ""
        headers = {"Accept": "application/json", spec.key_header: spec.key_prefix + key}
        headers.update(dict(spec.extra_headers))
        try:
            raw = await get_model_list(
                self._session,
                url,
                headers,
                on_status=functools.partial(status_error, credential.provider),
                client_timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT_S),
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise transport_error(
                exc, credential.provider, started=False, timeouts=self._timeouts
            ) from exc
        return _model_cards(credential.provider, raw)

    def _direct_url(self, provider: str, base_url: str | None, spec: DirectModelList) -> URL:
        # endpoints_for applies the same URL validation and SSRF guard as every other call.
        checked = endpoints_for(provider, base_url or spec.default_base_url, self._allow_private)
        path = checked.models.path.removesuffix("/models")
        path = path.removesuffix(spec.known_prefix)
        return checked.models.with_path(path + spec.path).with_query(checked.models.query)


def _model_cards(provider: str, raw: bytes) -> list[ModelCard]:
    try:
        listing = orjson.loads(raw)
    except orjson.JSONDecodeError:
        listing = None
    entries = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(entries, list):
        raise ByoError(502, "upstream_error", "it sent a malformed model list")
    return [
        ModelCard(id=f"{provider}/{entry['id']}", owned_by=provider)
        for entry in entries
        if isinstance(entry, dict) and isinstance(entry.get("id"), str)
    ]
