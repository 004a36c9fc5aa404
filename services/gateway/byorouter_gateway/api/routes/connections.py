"""/v1/connections/{id}: what an app may see of, and do with, one of its users' connections.

Ownership is by app: keystore answers 404 for another app's connection, the same as for one
that does not exist, so an app cannot even learn that it exists.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts import router as rt
from byorouter_gateway.api.schemas import (
    APP_ERRORS,
    ConnectionDeletedView,
    ConnectionView,
    ProviderList,
    ProviderView,
    ProviderWithModelsView,
    UsageList,
    UsageView,
)
from byorouter_gateway.deps import AppPrincipalDep, BusDep, checked_connection_id

router = APIRouter(tags=["connections"])


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
