"""App API keys at the gateway: who gets in, how fast a revoked key is shut out, rate limits.

Keys are issued and revoked by the real keystore; how often the gateway asked keystore is read
from keystore's own NATS micro statistics.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from tests.gateway.gateway_client import (
    Tenant,
    another_key,
    authenticate_calls,
    chat_body,
    forged_key,
    new_tenant,
)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer sk-not-our-kind-of-key-0123456789",
        "Bearer byo_sk_short_abc",
        "Bearer byo_sk_ABCDEFGHIJKL_" + "a" * 43,  # key ids are lower-case
    ],
)
async def test_missing_or_malformed_key_is_401_without_asking_keystore(
    http: httpx.AsyncClient, tenant: Tenant, bus: Bus, authorization: str | None
) -> None:
    headers = {"X-Byorouter-Connection": tenant.connection_id}
    if authorization is not None:
        headers["Authorization"] = authorization
    calls = await authenticate_calls(bus.nc)
    response = await http.post("/v1/chat/completions", headers=headers, json=chat_body())
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["status"] == 401
    assert response.headers["x-should-retry"] == "false"
    assert await authenticate_calls(bus.nc) == calls
    if authorization:
        assert authorization.split()[-1] not in response.text


async def test_unknown_or_altered_key_is_401_and_never_echoed(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    last = tenant.app_key[-1]
    altered = tenant.app_key[:-1] + ("A" if last != "A" else "B")
    for key in (forged_key(), altered):
        response = await http.post(
            "/v1/chat/completions",
            headers={**tenant.headers, "Authorization": f"Bearer {key}"},
            json=chat_body(),
        )
        assert response.status_code == 401
        assert key not in response.text
        assert key[-43:] not in str(response.headers)


async def test_a_known_key_is_checked_with_keystore_once_then_cached(
    http: httpx.AsyncClient, tenant: Tenant, bus: Bus
) -> None:
    calls = await authenticate_calls(bus.nc)
    responses = await asyncio.gather(
        *(
            http.post("/v1/chat/completions", headers=tenant.headers, json=chat_body())
            for _ in range(5)
        )
    )
    assert [r.status_code for r in responses] == [200] * 5
    assert await authenticate_calls(bus.nc) == calls + 1


async def test_revoked_key_is_refused_at_once_despite_the_cache(
    http: httpx.AsyncClient, tenant: Tenant, bus: Bus
) -> None:
    spare = await another_key(bus, tenant)
    for key_holder in (tenant, spare):
        ok = await http.post("/v1/chat/completions", headers=key_holder.headers, json=chat_body())
        assert ok.status_code == 200  # now cached for 30 s
    await bus.request(ks.APP_KEY_REVOKE, ks.AppKeyRevoke(key_id=tenant.key_id))
    deadline = time.monotonic() + 1.0
    while True:
        response = await http.post("/v1/chat/completions", headers=tenant.headers, json=chat_body())
        if response.status_code == 401:
            break
        assert response.status_code == 200
        assert time.monotonic() < deadline, "revoked key still accepted 1 s after revocation"
        await asyncio.sleep(0.02)
    # Only the revoked key is shut out: the app's other key still works.
    still = await http.post("/v1/chat/completions", headers=spare.headers, json=chat_body())
    assert still.status_code == 200


async def test_app_keys_never_reach_the_log(
    http: httpx.AsyncClient, tenant: Tenant, stack: Stack
) -> None:
    forged = forged_key()
    for key in (tenant.app_key, forged):
        await http.post(
            "/v1/chat/completions",
            headers={**tenant.headers, "Authorization": f"Bearer {key}"},
            json=chat_body(stream=True),
        )
    stack.flush_logs()
    # Every service of the stack logs at DEBUG, spans included.
    for log_file in stack.log_files():
        logged = log_file.read_text(errors="replace")
        assert tenant.app_key not in logged, log_file.name
        assert forged not in logged, log_file.name


async def test_app_over_its_rate_limit_gets_429_with_retry_after(
    tuned_stack: Stack, tuned_bus: Bus
) -> None:
    busy = await new_tenant(tuned_bus, tuned_stack)
    calm = await new_tenant(tuned_bus, tuned_stack)
    async with httpx.AsyncClient(base_url=tuned_stack.gateway_url, timeout=10) as client:
        statuses = [
            (await client.get("/v1/models", headers=busy.headers)).status_code for _ in range(2)
        ]
        assert statuses == [200, 200]
        limited = await client.get("/v1/models", headers=busy.headers)
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert limited.headers["retry-after"] == "2"
        # Another app has its own budget.
        assert (await client.get("/v1/models", headers=calm.headers)).status_code == 200


async def test_every_response_carries_a_request_id(http: httpx.AsyncClient, tenant: Tenant) -> None:
    responses = [
        await http.get("/healthz"),
        await http.post("/v1/chat/completions", json=chat_body()),
        await http.post("/v1/chat/completions", headers=tenant.headers, json=chat_body()),
        await http.get("/nope"),
        await http.get("/healthz", headers={"X-Request-Id": "bad id with spaces"}),
        await http.get("/healthz", headers={"X-Request-Id": "x" * 65}),
    ]
    ids = [r.headers["x-request-id"] for r in responses]
    assert all(i.startswith("req_") and len(i) == 36 for i in ids)
    assert len(set(ids)) == len(ids)
    echoed = await http.get("/healthz", headers={"X-Request-Id": "Trace-42_a"})
    assert echoed.headers["x-request-id"] == "Trace-42_a"


async def test_with_keystore_down_cached_keys_keep_working_and_others_get_503(
    tuned_stack: Stack, tuned_bus: Bus
) -> None:
    known = await new_tenant(tuned_bus, tuned_stack)
    unseen = await new_tenant(tuned_bus, tuned_stack)
    async with httpx.AsyncClient(base_url=tuned_stack.gateway_url, timeout=10) as client:
        first = await client.post("/v1/chat/completions", headers=known.headers, json=chat_body())
        assert first.status_code == 200
        tuned_stack.stop_service("keystore")
        try:
            # The gateway trusts the cached key and the router its cached credentials.
            again = await client.post(
                "/v1/chat/completions", headers=known.headers, json=chat_body()
            )
            assert again.status_code == 200
            # A key nobody has vouched for yet cannot be checked: unavailable, not unauthorized.
            response = await client.post(
                "/v1/chat/completions", headers=unseen.headers, json=chat_body()
            )
            assert response.status_code == 503
            assert response.json()["error"]["status"] == 503
        finally:
            tuned_stack.start_service("keystore")
