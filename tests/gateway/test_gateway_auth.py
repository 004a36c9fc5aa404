"""App API keys at the gateway: who gets in, how fast a revoked key is shut out, rate limits.

Keystore here is the contract-speaking stand-in of conftest.py (the real one is being built).
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from tests.gateway.conftest import (
    FakeKeystore,
    FakeRouter,
    RunningGateway,
    Tenant,
    chat_body,
    new_app_key,
    start_gateway,
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
    http: httpx.AsyncClient, tenant: Tenant, keystore: FakeKeystore, authorization: str | None
) -> None:
    headers = {"X-Byorouter-Connection": tenant.connection_id}
    if authorization is not None:
        headers["Authorization"] = authorization
    calls = keystore.authenticate_calls
    response = await http.post("/v1/chat/completions", headers=headers, json=chat_body())
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["status"] == 401
    assert response.headers["x-should-retry"] == "false"
    assert keystore.authenticate_calls == calls
    if authorization:
        assert authorization.split()[-1] not in response.text


async def test_unknown_key_is_401_and_never_echoed(http: httpx.AsyncClient, tenant: Tenant) -> None:
    _, forged = new_app_key()
    for key in (forged, tenant.app_key[:-1] + ("A" if tenant.app_key[-1] != "A" else "B")):
        response = await http.post(
            "/v1/chat/completions",
            headers={
                "Authorization": f"Bearer {key}",
                "X-Byorouter-Connection": tenant.connection_id,
            },
            json=chat_body(),
        )
        assert response.status_code == 401
        assert key not in response.text
        assert key[-43:] not in str(response.headers)


async def test_a_known_key_is_checked_with_keystore_once_then_cached(
    http: httpx.AsyncClient, tenant: Tenant, keystore: FakeKeystore
) -> None:
    calls = keystore.authenticate_calls
    responses = await asyncio.gather(
        *(
            http.post("/v1/chat/completions", headers=tenant.headers, json=chat_body())
            for _ in range(5)
        )
    )
    assert [r.status_code for r in responses] == [200] * 5
    assert keystore.authenticate_calls == calls + 1


async def test_revoked_key_is_refused_at_once_despite_the_cache(
    http: httpx.AsyncClient, tenant: Tenant, keystore: FakeKeystore
) -> None:
    ok = await http.post("/v1/chat/completions", headers=tenant.headers, json=chat_body())
    assert ok.status_code == 200  # now cached for 30 s
    await keystore.revoke(tenant.key_id)
    deadline = time.monotonic() + 1.0
    while True:
        response = await http.post("/v1/chat/completions", headers=tenant.headers, json=chat_body())
        if response.status_code == 401:
            break
        assert response.status_code == 200
        assert time.monotonic() < deadline, "revoked key still accepted 1 s after the event"
        await asyncio.sleep(0.02)


async def test_app_keys_never_reach_the_log(
    http: httpx.AsyncClient, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    _, forged = new_app_key()
    with caplog.at_level(logging.DEBUG):
        for key in (tenant.app_key, forged):
            await http.post(
                "/v1/chat/completions",
                headers={
                    "Authorization": f"Bearer {key}",
                    "X-Byorouter-Connection": tenant.connection_id,
                },
                json=chat_body(stream=True),
            )
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert tenant.app_key not in logged
    assert forged not in logged


async def test_app_over_its_rate_limit_gets_429_with_retry_after(
    gateway_nats_url: str, keystore: FakeKeystore, router: FakeRouter
) -> None:
    strict = await start_gateway(gateway_nats_url, rate_limit_rps=0.5, rate_limit_burst=2)
    busy, calm = keystore.new_tenant(), keystore.new_tenant()
    try:
        async with httpx.AsyncClient(base_url=strict.url) as client:
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
    finally:
        await strict.stop()


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


async def test_gateway_copy_keeps_working_for_cached_keys_and_says_why_others_fail(
    gateway: RunningGateway, tenant: Tenant, keystore: FakeKeystore
) -> None:
    """With keystore gone, a cached key still works; an unseen key gets 503, not 401."""
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        assert (await client.get("/v1/models", headers=tenant.headers)).status_code == 200
        other = keystore.new_tenant()
        await keystore.stop()
        try:
            assert (await client.get("/v1/models", headers=tenant.headers)).status_code == 200
            response = await client.get("/v1/models", headers=other.headers)
            assert response.status_code == 503
        finally:
            await keystore.start(keystore.nats_url)
