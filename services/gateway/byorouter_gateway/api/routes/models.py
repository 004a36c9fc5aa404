"""GET /v1/models: the models the caller's connection can use now, as the router sees them."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts import router as rt
from byorouter_gateway.api.schemas import APP_ERRORS
from byorouter_gateway.deps import AppPrincipalDep, BusDep, ConnectionIdDep

router = APIRouter(tags=["models"])


@router.get(
    "/v1/models",
    summary="List the models of the connection's providers",
    response_class=Response,
    responses={
        200: {"model": rt.ModelList, "description": "Provider-prefixed model ids."},
        **APP_ERRORS,
    },
)
async def list_models(
    principal: AppPrincipalDep, connection_id: ConnectionIdDep, bus: BusDep
) -> Response:
    models = await bus.request(
        rt.MODELS, ks.ConnectionRef(app_id=principal.app_id, connection_id=connection_id)
    )
    return Response(models.model_dump_json().encode(), media_type="application/json")
