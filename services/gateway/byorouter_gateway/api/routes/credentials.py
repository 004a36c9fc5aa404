"""Test a key before storing it: POST /v1/credentials/test and seed 002's /api/ai/test-connection.

The router tries the key the way Connect's Test button does (`PROVIDER_TEST`) and answers in
the same words, with the models it found. Only headless apps may ask (their server holds the
key anyway); each app has its own budget of tests per minute. The key is never logged or echoed.
"""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, Request
from pydantic import SecretStr

from byorouter_common import errors
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts import router as rt
from byorouter_common.contracts.keystore import headless as hl
from byorouter_common.errors import ByoError
from byorouter_gateway.api.schemas import (
    HEADLESS_ERRORS,
    CredentialTestRequest,
    CredentialTestResult,
    SeedTestConnection,
    json_request_body,
)
from byorouter_gateway.deps import AppPrincipalDep, BusDep, GatewayDep, json_body

router = APIRouter(tags=["credentials"])

MAX_BODY: Final = 16 * 1024
# Well past the router's own limit on a check (10 s), so its plain-words answer arrives first.
_TEST_TIMEOUT_S: Final = 15.0


def seed_provider(name: str) -> ks.ProviderName | None:
    """Seed 002's provider name as ours; None for `default` (the app's own AI, no user key)."""
    if name == "default":
        return None
    if name == "self-hosted":
        return "selfhosted"
    return name  # type: ignore[return-value]  # the schema's Literal allows only our names here


async def try_credential(
    gateway: GatewayDep,
    principal: ks.AppPrincipal,
    bus: Bus,
    provider: ks.ProviderName,
    api_key: SecretStr | None,
    base_url: str | None,
    model: str | None,
) -> CredentialTestResult:
    gateway.credential_tests.take(principal.app_id)
    await bus.request(hl.HEADLESS_CHECK, hl.HeadlessCheck(app_id=principal.app_id))
    try:
        result = await bus.request(
            rt.PROVIDER_TEST,
            rt.ProviderTest(
                provider=provider, api_key=api_key, base_url=base_url, list_models=True
            ),
            timeout_s=_TEST_TIMEOUT_S,
        )
    except ByoError as exc:
        if exc.status == 400:
            raise
        raise errors.unavailable(
            "The test could not run right now; try again in a minute."
        ) from None
    available = None
    if model and result.ok:
        wanted = model.strip().removeprefix(f"{provider}/")
        available = wanted in result.models
    return CredentialTestResult(
        ok=result.ok,
        message=result.message,
        model_count=result.model_count,
        models=result.models,
        model_available=available,
    )


@router.post(
    "/v1/credentials/test",
    summary="Try a provider key before storing it (headless apps)",
    responses=HEADLESS_ERRORS,
    openapi_extra=json_request_body(CredentialTestRequest),
)
async def post_credential_test(
    request: Request, principal: AppPrincipalDep, bus: BusDep, gateway: GatewayDep
) -> CredentialTestResult:
    body = await json_body(request, CredentialTestRequest, MAX_BODY)
    return await try_credential(
        gateway, principal, bus, body.provider, body.api_key, body.base_url, body.model
    )


@router.post(
    "/api/ai/test-connection",
    summary="Seed 002's Test connection: the same as POST /v1/credentials/test",
    responses=HEADLESS_ERRORS,
    openapi_extra=json_request_body(SeedTestConnection),
)
async def post_seed_test_connection(
    request: Request, principal: AppPrincipalDep, bus: BusDep, gateway: GatewayDep
) -> CredentialTestResult:
    body = await json_body(request, SeedTestConnection, MAX_BODY)
    provider = seed_provider(body.provider)
    if provider is None:
        raise errors.bad_request(
            'provider "default" is the app\'s own AI: there is no user key to test.',
            param="provider",
        )
    return await try_credential(
        gateway, principal, bus, provider, body.api_key, body.base_url, body.model_id
    )
