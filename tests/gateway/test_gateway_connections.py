"""/v1/connections/{id} and /v1/models: what an app may see of its users' connections.

Connections are stored by the real keystore; models are listed by the real router, which asks
the connection's provider (the fake OpenAI upstream).
"""

from __future__ import annotations

import asyncio
import time

import httpx
from pydantic import SecretStr

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_fakes.openai import MODELS as FAKE_OPENAI_MODELS
from tests.gateway.gateway_client import Tenant, chat_body, new_tenant

OPENAI_KEY = "sk-proj-gateway0test0key0AbCd"
ANTHROPIC_KEY = "sk-ant-api03-gateway0test0key0WxYz"


async def test_connection_shows_providers_with_masked_labels_only(
    http: httpx.AsyncClient, tenant: Tenant, bus: Bus, stack: Stack
) -> None:
    connection = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=tenant.app_id,
            fallback_to_default=True,
            providers=[
                ks.ProviderCredentialInput(
                    provider="openai",
                    api_key=SecretStr(OPENAI_KEY),
                    base_url=stack.upstream_base_url,
                    preferred_model="gpt-4o-mini",
                ),
                ks.ProviderCredentialInput(provider="anthropic", api_key=SecretStr(ANTHROPIC_KEY)),
            ],
        ),
    )
    conn_id = connection.connection_id
    headers = {"Authorization": f"Bearer {tenant.app_key}"}  # the path names the connection
    response = await http.get(f"/v1/connections/{conn_id}", headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == conn_id
    assert body["object"] == "connection"
    assert body["status"] == "active"
    assert body["fallback_to_default"] is True
    assert body["created_at"]
    assert [p["label"] for p in body["providers"]] == ["sk-...AbCd", "sk-...WxYz"]

    providers = await http.get(f"/v1/connections/{conn_id}/providers", headers=headers)
    assert providers.status_code == 200
    listing = providers.json()
    assert listing["object"] == "list"
    # Each provider names the models it offers now (seed 000 builds its model picker from this).
    models = [entry.pop("models") for entry in listing["data"]]
    assert [m["id"] for m in models[0]] == [f"openai/{m}" for m in FAKE_OPENAI_MODELS]
    assert models[1] == []  # no Anthropic is reachable from here: left out, not fatal
    assert listing["data"] == [
        {
            "provider": "openai",
            "label": "sk-...AbCd",
            "base_url": stack.upstream_base_url,
            "preferred_model": "gpt-4o-mini",
            "priority": 0,
            "status": "ok",
            "last_error": None,
        },
        {
            "provider": "anthropic",
            "label": "sk-...WxYz",
            "base_url": None,
            "preferred_model": None,
            "priority": 1,
            "status": "ok",
            "last_error": None,
        },
    ]
    for key in (OPENAI_KEY, ANTHROPIC_KEY):
        assert key not in response.text + providers.text


async def test_another_apps_connection_is_not_found_and_left_alone(
    http: httpx.AsyncClient, tenant: Tenant, bus: Bus, stack: Stack
) -> None:
    other = await new_tenant(bus, stack, name="other app")
    headers = {"Authorization": f"Bearer {tenant.app_key}"}
    for method, path in (("GET", ""), ("GET", "/providers"), ("DELETE", "")):
        response = await http.request(
            method, f"/v1/connections/{other.connection_id}{path}", headers=headers
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "connection_not_found"
    owner = await http.post("/v1/chat/completions", headers=other.headers, json=chat_body())
    assert owner.status_code == 200


async def test_deleted_connection_is_gone(http: httpx.AsyncClient, tenant: Tenant) -> None:
    headers = {"Authorization": f"Bearer {tenant.app_key}"}
    ok = await http.post("/v1/chat/completions", headers=tenant.headers, json=chat_body())
    assert ok.status_code == 200
    response = await http.delete(f"/v1/connections/{tenant.connection_id}", headers=headers)
    assert response.status_code == 200
    assert response.json() == {"id": tenant.connection_id, "object": "connection", "deleted": True}
    again = await http.get(f"/v1/connections/{tenant.connection_id}", headers=headers)
    assert again.status_code == 404
    # Nothing is routed through it any more, though the router had its credentials cached.
    deadline = time.monotonic() + 1.0
    while True:
        chat = await http.post("/v1/chat/completions", headers=tenant.headers, json=chat_body())
        if chat.status_code == 404:
            break
        assert chat.status_code == 200
        assert time.monotonic() < deadline, "deleted connection still answered after 1 s"
        await asyncio.sleep(0.02)
    assert chat.json()["error"]["code"] == "connection_not_found"


async def test_models_of_the_connection_are_listed_provider_prefixed(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await http.get("/v1/models", headers=tenant.headers)
    assert response.status_code == 200
    listing = response.json()
    assert listing["object"] == "list"
    ids = [m["id"] for m in listing["data"]]
    assert "openai/gpt-4o-mini" in ids
    assert all(i.startswith("openai/") for i in ids)
    assert all(m["object"] == "model" and m["owned_by"] for m in listing["data"])


async def test_models_tell_a_picker_their_kind_and_name_in_the_openai_list_shape(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await http.get("/v1/models", headers=tenant.headers)
    cards = {m["id"]: m for m in response.json()["data"]}
    assert cards["openai/text-embedding-3-small"]["kind"] == "embedding"
    assert cards["openai/gpt-4o-mini"]["kind"] == "chat"
    assert cards["openai/gpt-4o-mini"]["name"] == "gpt-4o-mini"
    assert cards["openai/gpt-4o-mini"]["context_length"] is None
    assert {"id", "object", "created", "owned_by"} <= cards["openai/gpt-4o-mini"].keys()
