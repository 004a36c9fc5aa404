"""/v1/connections/{id}: what an app may see of, and do with, one of its users' connections.

Ownership is by app: keystore answers 404 for another app's connection, the same as for one
that does not exist, so an app cannot even learn that it exists.
"""

from __future__ import annotations

import asyncio
from typing import Final

from fastapi import APIRouter, Request
from starlette.responses import Response

from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts import router as rt
from byorouter_common.contracts.keystore import headless as hl
from byorouter_gateway.api.schemas import (
    APP_ERRORS,
    HEADLESS_ERRORS,
    ConnectionCreateRequest,
    ConnectionDeletedView,
    ConnectionUpdateRequest,
    ConnectionView,
    ProviderKeyInput,
    ProviderKeyReplace,
    ProviderList,
    ProviderView,
    ProviderWithModelsView,
    UsageList,
    UsageView,
    json_request_body,
)
from byorouter_gateway.deps import AppPrincipalDep, BusDep, checked_connection_id, json_body

router = APIRouter(tags=["connections"])

# Eight providers with their keys and URLs fit easily.
MAX_BODY: Final = 64 * 1024


def _ref(principal: ks.AppPrincipal, connection_id: str) -> ks.ConnectionRef:
    return ks.ConnectionRef(
        app_id=principal.app_id, connection_id=checked_connection_id(connection_id)
    )


@router.get(
    "/v1/connections/{connection_id}",
    summary="A connection and its providers (masked)",
    responses=APP_ERRORS,
)
async def get_connection(
    connection_id: str, principal: AppPrincipalDep, bus: BusDep
) -> ConnectionView:
    info = await bus.request(ks.CONNECTION_GET, _ref(principal, connection_id))
    return ConnectionView.of(info)


@router.get(
    "/v1/connections/{connection_id}/providers",
    summary="The providers of a connection (masked), each with the models it offers now",
    responses=APP_ERRORS,
)
async def list_connection_providers(
    connection_id: str, principal: AppPrincipalDep, bus: BusDep
) -> ProviderList:
    ref = _ref(principal, connection_id)
    info, listing = await asyncio.gather(
        bus.request(ks.CONNECTION_GET, ref), bus.request(rt.MODELS, ref)
    )
    by_provider: dict[str, list[rt.ModelCard]] = {}
    for card in listing.data:
        # `default/...` models are the app's provider, not one of this connection's.
        by_provider.setdefault(card.id.partition("/")[0], []).append(card)
    return ProviderList(
        data=[
            ProviderWithModelsView(
                **ProviderView.of(p).model_dump(), models=by_provider.get(p.provider, [])
            )
            for p in info.providers
        ]
    )


@router.get(
    "/v1/connections/{connection_id}/usage",
    summary="Token usage of a connection per provider, model and day (UTC)",
    responses=APP_ERRORS,
)
async def get_connection_usage(
    connection_id: str, principal: AppPrincipalDep, bus: BusDep
) -> UsageList:
    report = await bus.request(ks.USAGE_GET, _ref(principal, connection_id))
    return UsageList(data=[UsageView.of(row) for row in report.rows])


@router.delete(
    "/v1/connections/{connection_id}",
    summary="Disconnect: revoke and erase its credentials",
    responses=APP_ERRORS,
)
async def delete_connection(
    connection_id: str, principal: AppPrincipalDep, bus: BusDep
) -> ConnectionDeletedView:
    deleted = await bus.request(ks.CONNECTION_DELETE, _ref(principal, connection_id))
    return ConnectionDeletedView(id=deleted.connection_id, deleted=deleted.deleted)


# --- headless connections: the app's server stores its user's keys (keystore refuses with 403
# unless the operator allowed this app) --------------------------------------------------------


@router.post(
    "/v1/connections",
    status_code=201,
    summary="Create a connection with the user's keys (headless apps)",
    responses=HEADLESS_ERRORS,
    openapi_extra=json_request_body(ConnectionCreateRequest),
)
async def create_connection(
    request: Request, response: Response, principal: AppPrincipalDep, bus: BusDep
) -> ConnectionView:
    body = await json_body(request, ConnectionCreateRequest, MAX_BODY)
    info = await bus.request(
        hl.HEADLESS_CONNECTION_CREATE,
        hl.HeadlessConnectionCreate(
            app_id=principal.app_id,
            providers=[p.credential() for p in body.providers],
            fallback_to_default=body.fallback_to_default,
        ),
    )
    response.headers["Location"] = f"/v1/connections/{info.connection_id}"
    return ConnectionView.of(info)


async def update_connection(
    bus: BusDep, principal: ks.AppPrincipal, connection_id: str, body: ConnectionUpdateRequest
) -> ConnectionView:
    info = await bus.request(
        hl.HEADLESS_CONNECTION_UPDATE,
        hl.HeadlessConnectionUpdate(
            app_id=principal.app_id,
            connection_id=checked_connection_id(connection_id),
            providers=[p.credential() for p in body.providers],
            remove_providers=body.remove_providers,
            order=body.order,
            preferred_models=body.preferred_models,
            fallback_to_default=body.fallback_to_default,
        ),
    )
    return ConnectionView.of(info)


@router.patch(
    "/v1/connections/{connection_id}",
    summary="Replace keys, add or remove providers, change order and preferences (headless)",
    responses=HEADLESS_ERRORS,
    openapi_extra=json_request_body(ConnectionUpdateRequest),
)
async def patch_connection(
    connection_id: str, request: Request, principal: AppPrincipalDep, bus: BusDep
) -> ConnectionView:
    body = await json_body(request, ConnectionUpdateRequest, MAX_BODY)
    return await update_connection(bus, principal, connection_id, body)


@router.put(
    "/v1/connections/{connection_id}/providers/{provider}",
    summary="Add a provider, or replace its key (headless); the connection id stays",
    responses=HEADLESS_ERRORS,
    openapi_extra=json_request_body(ProviderKeyReplace),
)
async def put_connection_provider(
    connection_id: str,
    provider: ks.ProviderName,
    request: Request,
    principal: AppPrincipalDep,
    bus: BusDep,
) -> ConnectionView:
    body = await json_body(request, ProviderKeyReplace, MAX_BODY)
    change = ConnectionUpdateRequest(
        providers=[
            ProviderKeyInput(
                provider=provider,
                api_key=body.api_key,
                base_url=body.base_url,
                preferred_model=body.preferred_model,
                tunnel_id=body.tunnel_id,
            )
        ]
    )
    return await update_connection(bus, principal, connection_id, change)


@router.delete(
    "/v1/connections/{connection_id}/providers/{provider}",
    summary="Remove a provider and erase its key (headless); the last one cannot go",
    responses=HEADLESS_ERRORS,
)
async def delete_connection_provider(
    connection_id: str, provider: ks.ProviderName, principal: AppPrincipalDep, bus: BusDep
) -> ConnectionView:
    change = ConnectionUpdateRequest(remove_providers=[provider])
    return await update_connection(bus, principal, connection_id, change)
