"""Seed 002's Settings page save: POST /api/user-preferences/ai-provider, body as the seed has it.

Without `X-Byorouter-Connection` it creates a headless connection and answers its id (201), for
the app to keep as the user's; with it, it changes that connection (the id stays): a new key
replaces the stored one, the chosen provider is tried first, and the preferred model and the
fallback toggle are set. Everything else is `POST`/`PATCH /v1/connections`.
"""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, Request
from starlette.responses import Response

from byorouter_common import errors
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.keystore import headless as hl
from byorouter_common.errors import ByoError
from byorouter_gateway.api.routes.connections import MAX_BODY, update_connection
from byorouter_gateway.api.routes.credentials import seed_provider
from byorouter_gateway.api.schemas import (
    HEADLESS_ERRORS,
    ConnectionUpdateRequest,
    ConnectionView,
    ProviderKeyInput,
    SeedAiProviderPreference,
    json_request_body,
)
from byorouter_gateway.deps import (
    CONNECTION_HEADER,
    AppPrincipalDep,
    BusDep,
    checked_connection_id,
    json_body,
)

router = APIRouter(tags=["connections"])

# Where keystore's refusal of the one provider points, in the seed's own field names.
_SEED_FIELDS: Final = {
    "openrouter": {"api_key": "openRouterApiKey", "base_url": "openRouterBaseUrl"},
    "selfhosted": {
        "api_key": "selfHostedAuthKey",
        "base_url": "selfHostedUrl",
        "tunnel_id": "tunnelId",
    },
}


def _provider_of(body: SeedAiProviderPreference) -> ProviderKeyInput:
    provider = seed_provider(body.ai_provider)
    if provider is None:
        raise errors.bad_request(
            'aiProvider "default" stores no user key: the app\'s own AI serves default/<model> '
            "(to erase a user's keys, DELETE /v1/connections/{id}).",
            param="aiProvider",
        )
    if provider == "selfhosted":
        return ProviderKeyInput(
            provider=provider,
            api_key=body.self_hosted_auth_key,
            base_url=body.self_hosted_url,
            tunnel_id=body.tunnel_id,
        )
    if provider != "openrouter":
        raise errors.bad_request(
            "aiProvider must be default, openrouter or self-hosted here; other providers are "
            "stored with POST /v1/connections.",
            param="aiProvider",
        )
    return ProviderKeyInput(
        provider=provider,
        api_key=body.open_router_api_key,
        base_url=body.open_router_base_url,
        preferred_model=body.open_router_model_preference,
    )


def _in_seed_terms(exc: ByoError, provider: str) -> ByoError:
    """Keystore names `providers[0].api_key`; the seed's app knows `openRouterApiKey`."""
    if exc.param is None or not exc.param.startswith("providers[0]."):
        return exc
    field = exc.param.removeprefix("providers[0].")
    seed_field = _SEED_FIELDS.get(provider, {}).get(field)
    if seed_field is None:
        return exc
    message = exc.message.replace(f"providers[0].{field}", seed_field)
    return ByoError(exc.status, exc.code, message, param=seed_field)


@router.post(
    "/api/user-preferences/ai-provider",
    summary="Seed 002's save of a user's AI provider: creates or changes their connection",
    responses=HEADLESS_ERRORS,
    openapi_extra=json_request_body(SeedAiProviderPreference),
)
async def post_ai_provider(
    request: Request, response: Response, principal: AppPrincipalDep, bus: BusDep
) -> ConnectionView:
    body = await json_body(request, SeedAiProviderPreference, MAX_BODY)
    chosen = _provider_of(body)
    connection_id = request.headers.get(CONNECTION_HEADER)
    try:
        if not connection_id:
            return await _create(request, response, principal, bus, chosen, body)
        return await _change(bus, principal, checked_connection_id(connection_id), chosen, body)
    except ByoError as exc:
        raise _in_seed_terms(exc, chosen.provider) from None


async def _create(
    request: Request,
    response: Response,
    principal: ks.AppPrincipal,
    bus: BusDep,
    chosen: ProviderKeyInput,
    body: SeedAiProviderPreference,
) -> ConnectionView:
    info = await bus.request(
        hl.HEADLESS_CONNECTION_CREATE,
        hl.HeadlessConnectionCreate(
            app_id=principal.app_id,
            providers=[chosen.credential()],
            fallback_to_default=body.fallback_to_default,
        ),
    )
    response.status_code = 201
    response.headers["Location"] = f"/v1/connections/{info.connection_id}"
    return ConnectionView.of(info)


async def _change(
    bus: BusDep,
    principal: ks.AppPrincipal,
    connection_id: str,
    chosen: ProviderKeyInput,
    body: SeedAiProviderPreference,
) -> ConnectionView:
    current = await bus.request(
        ks.CONNECTION_GET, ks.ConnectionRef(app_id=principal.app_id, connection_id=connection_id)
    )
    stored = [p.provider for p in current.providers]
    # Saving the form again without retyping the OpenRouter key keeps the stored one (a
    # self-hosted server may need no key, so its fields are always taken as sent).
    keep_key = (
        chosen.provider == "openrouter" and chosen.api_key is None and chosen.provider in stored
    )
    order = [chosen.provider] + [p for p in stored if p != chosen.provider]
    change = ConnectionUpdateRequest(
        providers=[] if keep_key else [chosen],
        order=order,
        preferred_models=(
            {chosen.provider: chosen.preferred_model} if chosen.preferred_model else {}
        ),
        fallback_to_default=body.fallback_to_default,
    )
    return await update_connection(bus, principal, connection_id, change)
