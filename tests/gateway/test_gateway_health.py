"""Probes and the API description an operator or a client generator would use."""

from __future__ import annotations

import httpx

from byorouter_cli.backends import NatsServer
from tests.gateway.conftest import FakeRouter, start_gateway


async def test_healthz_answers_without_the_bus(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ready_when_keystore_and_router_answer(http: httpx.AsyncClient) -> None:
    response = await http.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


async def test_readyz_names_the_missing_router(http: httpx.AsyncClient, router: FakeRouter) -> None:
    async with router.stopped():
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not_ready", "missing": ["router"]}


async def test_readyz_on_an_empty_bus_names_both_services() -> None:
    empty = NatsServer().start()
    try:
        lonely = await start_gateway(empty.url)
        try:
            async with httpx.AsyncClient(base_url=lonely.url) as client:
                response = await client.get("/readyz")
                assert response.status_code == 503
                assert response.json()["missing"] == ["keystore", "router"]
                assert (await client.get("/healthz")).status_code == 200
        finally:
            await lonely.stop()
    finally:
        empty.stop()


async def test_openapi_documents_the_routes(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in (
        "/v1/chat/completions",
        "/v1/models",
        "/v1/connections/{connection_id}",
        "/v1/connections/{connection_id}/providers",
        "/healthz",
        "/readyz",
    ):
        assert path in paths
    chat = paths["/v1/chat/completions"]["post"]
    request_schema = chat["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "messages"} <= set(request_schema["required"])
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert spec["components"]["securitySchemes"]["AppKey"]["scheme"] == "bearer"
