"""/v1/connections/{id} and /v1/models: what an app may see of its users' connections.

Keystore and router here are the contract-speaking stand-ins of conftest.py.
"""

from __future__ import annotations

import httpx

from tests.gateway.conftest import FakeKeystore, Tenant


async def test_connection_shows_providers_with_masked_labels_only(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    headers = {"Authorization": f"Bearer {tenant.app_key}"}  # the path names the connection
    response = await http.get(f"/v1/connections/{tenant.connection_id}", headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == tenant.connection_id
    assert body["object"] == "connection"
    assert body["status"] == "active"
    assert body["fallback_to_default"] is True
    assert body["created_at"]
    assert [p["label"] for p in body["providers"]] == ["sk-...AbCd", "sk-ant-...WxYz"]

    providers = await http.get(f"/v1/connections/{tenant.connection_id}/providers", headers=headers)
    assert providers.status_code == 200
    listing = providers.json()
    assert listing["object"] == "list"
    assert listing["data"][1] == {
        "provider": "anthropic",
        "label": "sk-ant-...WxYz",
        "base_url": None,
        "preferred_model": None,
        "priority": 1,
        "status": "failing",
        "last_error": "401 from provider",
    }


async def test_another_apps_connection_is_not_found(
    http: httpx.AsyncClient, tenant: Tenant, keystore: FakeKeystore
) -> None:
    other = keystore.new_tenant()
    headers = {"Authorization": f"Bearer {tenant.app_key}"}
    for method, path in (("GET", ""), ("GET", "/providers"), ("DELETE", "")):
        response = await http.request(
            method, f"/v1/connections/{other.connection_id}{path}", headers=headers
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "connection_not_found"
    assert other.connection_id in keystore.connections


async def test_deleted_connection_is_gone(http: httpx.AsyncClient, tenant: Tenant) -> None:
    headers = {"Authorization": f"Bearer {tenant.app_key}"}
    response = await http.delete(f"/v1/connections/{tenant.connection_id}", headers=headers)
    assert response.status_code == 200
    assert response.json() == {"id": tenant.connection_id, "object": "connection", "deleted": True}
    again = await http.get(f"/v1/connections/{tenant.connection_id}", headers=headers)
    assert again.status_code == 404


async def test_models_of_the_connection_are_listed(http: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await http.get("/v1/models", headers=tenant.headers)
    assert response.status_code == 200
    assert response.json() == {
        "object": "list",
        "data": [
            {"id": "openai/gpt-4o-mini", "object": "model", "created": 0, "owned_by": "openai"}
        ],
    }
