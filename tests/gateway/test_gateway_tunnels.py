"""Seed 002's tunnel API through the gateway, with the real keystore behind it.

No tunnel client connects here (tests/tunnel does the online round trip): a registered tunnel is
offline, and the status page says so at once (NATS no-responders), without waiting a timeout.
"""

from __future__ import annotations

import time

import httpx

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts import tunnel as tn
from tests.gateway.gateway_client import Tenant, new_tenant

SEED_BODY = {
    "userId": "user-123",
    "modelInfo": {"name": "llama3.1:8b", "capabilities": ["chat", "tools"]},
}


async def register(http: httpx.AsyncClient, tenant: Tenant) -> dict[str, str]:
    response = await http.post("/api/tunnel/register", headers=tenant.headers, json=SEED_BODY)
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body


async def test_register_accepts_the_seed_body_and_shows_the_token_once(
    http: httpx.AsyncClient, tenant: Tenant, bus: Bus, stack: Stack
) -> None:
    response = await http.post("/api/tunnel/register", headers=tenant.headers, json=SEED_BODY)

    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"tunnel_id", "token", "connect_url", "command"}
    assert tn.is_tunnel_id(body["tunnel_id"])
    assert body["token"].startswith("byo_tun_")
    # The stack tells its gateway where its own tunnel service listens.
    assert body["connect_url"] == stack.tunnel_ws_url
    assert body["command"] == (
        f"BYOROUTER_TUNNEL_TOKEN={body['token']} byorouter-tunnel "
        f"--url {stack.tunnel_ws_url} --upstream http://127.0.0.1:11434/v1"
    )
    info = await bus.request(
        ks.TUNNEL_GET, ks.TunnelRef(app_id=tenant.app_id, tunnel_id=body["tunnel_id"])
    )
    assert info.connection_id == tenant.connection_id
    assert [(m.name, m.capabilities) for m in info.declared_models] == [
        ("llama3.1:8b", ["chat", "tools"])
    ]
    stack.flush_logs()
    for log in stack.log_files():
        assert body["token"] not in log.read_text(errors="replace"), log.name


async def test_register_with_no_body_and_the_connection_shows_the_tunnel(
    http: httpx.AsyncClient, tenant: Tenant, bus: Bus
) -> None:
    response = await http.post("/api/tunnel/register", headers=tenant.headers)
    assert response.status_code == 201, response.text
    tunnel_id = response.json()["tunnel_id"]

    providers = await http.get(
        f"/v1/connections/{tenant.connection_id}/providers", headers=tenant.headers
    )
    assert [p["provider"] for p in providers.json()["data"]] == ["openai", "selfhosted"]
    info = await bus.request(
        ks.CONNECTION_GET,
        ks.ConnectionRef(app_id=tenant.app_id, connection_id=tenant.connection_id),
    )
    assert [p.tunnel_id for p in info.providers] == [None, tunnel_id]


async def test_register_needs_the_connection_header_and_a_valid_body(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    no_header = await http.post(
        "/api/tunnel/register",
        headers={"Authorization": tenant.headers["Authorization"]},
        json=SEED_BODY,
    )
    bad_body = await http.post(
        "/api/tunnel/register", headers=tenant.headers, json={"modelInfo": {"name": ""}}
    )
    no_key = await http.post(
        "/api/tunnel/register",
        headers={"X-Byorouter-Connection": tenant.connection_id},
        json=SEED_BODY,
    )

    assert (no_header.status_code, no_header.json()["error"]["code"]) == (400, "missing_connection")
    assert bad_body.status_code == 400
    assert no_key.status_code == 401


async def test_status_of_a_tunnel_no_client_holds_is_offline_at_once(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    tunnel_id = (await register(http, tenant))["tunnel_id"]

    started = time.monotonic()
    response = await http.get(f"/api/tunnel/status/{tunnel_id}", headers=tenant.headers)
    elapsed = time.monotonic() - started

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tunnel_id"] == tunnel_id
    assert body["connection_id"] == tenant.connection_id
    assert body["state"] == "offline"
    assert body["clients"] == []
    assert body["last_seen"] is None
    assert body["models"] == []
    assert body["requests_in_flight"] == 0
    assert body["declared_models"] == [{"name": "llama3.1:8b", "capabilities": ["chat", "tools"]}]
    assert elapsed < 1.0


async def test_rotate_gives_a_new_token_and_the_old_one_an_end(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    registered = await register(http, tenant)
    tunnel_id = registered["tunnel_id"]

    response = await http.post(
        f"/api/tunnel/{tunnel_id}/rotate", headers=tenant.headers, json={"overlap_seconds": 60}
    )
    default = await http.post(f"/api/tunnel/{tunnel_id}/rotate", headers=tenant.headers)

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"tunnel_id", "token", "previous_valid_until", "command"}
    assert body["tunnel_id"] == tunnel_id
    assert body["token"] not in (registered["token"], "")
    assert body["previous_valid_until"]
    assert f"BYOROUTER_TUNNEL_TOKEN={body['token']} " in body["command"]
    assert default.status_code == 200


async def test_revoke_then_status_says_revoked_and_rotate_is_refused(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    tunnel_id = (await register(http, tenant))["tunnel_id"]

    revoked = await http.post(f"/api/tunnel/{tunnel_id}/revoke", headers=tenant.headers)
    status = await http.get(f"/api/tunnel/status/{tunnel_id}", headers=tenant.headers)
    rotate = await http.post(f"/api/tunnel/{tunnel_id}/rotate", headers=tenant.headers)

    assert revoked.status_code == 200, revoked.text
    assert revoked.json() == {"tunnel_id": tunnel_id, "revoked": True}
    assert (status.json()["state"], status.json()["status"]) == ("offline", "revoked")
    assert (rotate.status_code, rotate.json()["error"]["code"]) == (403, "tunnel_revoked")


async def test_another_apps_tunnel_is_not_found(
    http: httpx.AsyncClient, tenant: Tenant, bus: Bus, stack: Stack
) -> None:
    tunnel_id = (await register(http, tenant))["tunnel_id"]
    other = await new_tenant(bus, stack, name="another app")
    missing = "tun_" + "x" * 22

    for method, path in (
        ("GET", f"/api/tunnel/status/{tunnel_id}"),
        ("POST", f"/api/tunnel/{tunnel_id}/rotate"),
        ("POST", f"/api/tunnel/{tunnel_id}/revoke"),
        ("GET", f"/api/tunnel/status/{missing}"),
    ):
        response = await http.request(method, path, headers=other.headers)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "tunnel_not_found"
    # Someone else's connection cannot get a tunnel either.
    foreign = await http.post(
        "/api/tunnel/register",
        headers={**other.headers, "X-Byorouter-Connection": tenant.connection_id},
    )
    assert (foreign.status_code, foreign.json()["error"]["code"]) == (404, "connection_not_found")
    # The owner's tunnel is untouched.
    status = await http.get(f"/api/tunnel/status/{tunnel_id}", headers=tenant.headers)
    assert status.json()["status"] == "active"


async def test_a_malformed_tunnel_id_is_refused_before_reaching_the_bus(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await http.get("/api/tunnel/status/tun_a.b", headers=tenant.headers)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_tunnel_id")
