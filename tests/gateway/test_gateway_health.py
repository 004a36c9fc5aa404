"""Probes and the API description an operator or a client generator would use."""

from __future__ import annotations

import httpx

from byorouter_cli.dev.stack import Stack


async def test_healthz_answers(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ready_when_keystore_and_router_answer(http: httpx.AsyncClient) -> None:
    response = await http.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "missing": []}


async def test_readyz_names_each_missing_dependency_and_healthz_stays_up(
    tuned_stack: Stack,
) -> None:
    async with httpx.AsyncClient(base_url=tuned_stack.gateway_url, timeout=10) as client:
        try:
            tuned_stack.stop_service("router")
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.json() == {"status": "not_ready", "missing": ["router"]}
            tuned_stack.stop_service("keystore")
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.json()["missing"] == ["keystore", "router"]
            # Alive, just not ready: an orchestrator must not restart it for this.
            assert (await client.get("/healthz")).status_code == 200
        finally:
            tuned_stack.start_service("keystore")
            tuned_stack.start_service("router")
        assert (await client.get("/readyz")).status_code == 200


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
