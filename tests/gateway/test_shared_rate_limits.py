"""Rate limits hold across gateway copies: two gateway processes on one NATS (with its users and
permissions on) admit together what one limit allows, a connection's limit stops that user and
no other, and a limit set with `byorouter app limits` applies to the next request."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus, connect
from byorouter_common.contracts import keystore as ks
from tests.conftest import create_database, drop_database
from tests.gateway.gateway_client import Tenant, new_tenant

pytestmark = pytest.mark.slow

_SCRIPT = Path(sys.executable).with_name("byorouter")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "byorouter_cli.main"]


@pytest.fixture(scope="module")
def first(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    owned_database = create_database(database_url, "limits")
    running = Stack(
        tmp_path_factory.mktemp("limits-1") / ".byorouter",
        database_url=owned_database,
        services=("keystore", "router", "gateway"),
        env_overrides={"BYOROUTER_LOG_FORMAT": "text"},
    ).start()
    try:
        yield running
    finally:
        running.stop()
        drop_database(database_url, owned_database)


@pytest.fixture(scope="module")
def second(first: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Another gateway process on the first one's NATS, logging in as its `gateway` user."""
    passwords = json.loads(first.nats_users_file.read_text())
    running = Stack(
        tmp_path_factory.mktemp("limits-2") / ".byorouter",
        nats_url=first.nats_url,
        nats_passwords=passwords,
        services=("gateway",),
        upstream=False,
        env_overrides={"BYOROUTER_LOG_FORMAT": "text"},
    ).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
async def bus(first: Stack) -> AsyncIterator[Bus]:
    nc = await connect(first.nats_settings(), "limits-tests")
    yield Bus(nc)
    await nc.close()


@pytest.fixture
async def gateways(first: Stack, second: Stack) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with (
        httpx.AsyncClient(base_url=first.gateway_url, timeout=20) as one,
        httpx.AsyncClient(base_url=second.gateway_url, timeout=20) as two,
    ):
        yield [one, two]


async def set_limits(bus: Bus, tenant: Tenant, **limits: float) -> None:
    await bus.request(
        ks.APP_LIMITS_SET,
        ks.AppLimitsSet(app=tenant.app_id, limits=ks.AppRateLimits.model_validate(limits)),
    )


async def second_connection(bus: Bus, first: Stack, tenant: Tenant) -> Tenant:
    made = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=tenant.app_id,
            providers=[
                ks.ProviderCredentialInput(
                    provider="openai",
                    api_key=SecretStr(tenant.provider_key),
                    base_url=first.upstream_base_url,
                )
            ],
        ),
    )
    return Tenant(
        tenant.app_id, tenant.client_id, tenant.app_key, made.connection_id, tenant.provider_key
    )


def chat() -> dict[str, object]:
    return {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def until_refused(client: httpx.AsyncClient, tenant: Tenant, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while (
        await client.post("/v1/chat/completions", headers=tenant.headers, json=chat())
    ).status_code != 429:
        assert time.monotonic() < deadline, "the new limit never applied"


async def test_two_gateways_together_admit_what_one_app_limit_allows(
    bus: Bus, first: Stack, second: Stack, gateways: list[httpx.AsyncClient]
) -> None:
    tenant = await new_tenant(bus, first)
    rate, burst = 20.0, 20
    await set_limits(bus, tenant, rps=rate, burst=burst, connection_rps=0)
    statuses: list[int] = []
    refusals: list[httpx.Response] = []
    last_sent = 0.0

    async def hammer(client: httpx.AsyncClient, until: float) -> None:
        nonlocal last_sent
        while (now := time.monotonic()) < until:
            last_sent = max(last_sent, now)
            answer = await client.post("/v1/chat/completions", headers=tenant.headers, json=chat())
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                refusals.append(answer)

    started = time.monotonic()
    await asyncio.gather(*(hammer(c, started + 5.0) for c in gateways for _ in range(4)))
    finished = time.monotonic()

    admitted = statuses.count(200)
    # Admitted between the first request and the last answer, never more than one limit gives;
    # by the last request sent, at most a lease (4 tokens) per copy fewer, as the machine allows.
    most = burst + rate * (finished - started)
    least = burst + rate * (last_sent - started)
    assert 0.95 * least - 2 * 4 <= admitted <= most + 1, (admitted, least, most)
    assert set(statuses) == {200, 429}
    error = refusals[0].json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "for this app" in error["message"]
    assert f"byorouter app limits {tenant.app_id} --rps N" in error["message"]
    assert all(int(r.headers["retry-after"]) >= 1 for r in refusals)
    # The gateways reached their bucket under their own NATS users (none fell back to counting
    # alone, which they would say).
    for stack in (first, second):
        stack.flush_logs()
        assert not [line for line in stack.log_lines("gateway") if "shared bucket" in line]


async def test_a_connection_limit_stops_that_user_and_not_another_of_the_same_app(
    bus: Bus, first: Stack, gateways: list[httpx.AsyncClient]
) -> None:
    busy = await new_tenant(bus, first)
    calm = await second_connection(bus, first, busy)
    await set_limits(bus, busy, connection_rps=0.1, connection_burst=3)
    one, two = gateways
    statuses = [
        (await client.post("/v1/chat/completions", headers=busy.headers, json=chat())).status_code
        for client in (one, two, one)
    ]
    assert statuses == [200, 200, 200]
    for client in (one, two):
        refused = await client.post("/v1/chat/completions", headers=busy.headers, json=chat())
        assert refused.status_code == 429
        assert "for this connection" in refused.json()["error"]["message"]
        assert "--connection-rps N" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) >= 1
    for client in (one, two):
        answer = await client.post("/v1/chat/completions", headers=calm.headers, json=chat())
        assert answer.status_code == 200


async def test_a_limit_set_with_the_cli_applies_to_the_next_request_on_every_gateway(
    bus: Bus, first: Stack, gateways: list[httpx.AsyncClient]
) -> None:
    tenant = await new_tenant(bus, first)
    for client in gateways:  # both have the app's key cached, with the default limits
        answer = await client.post("/v1/chat/completions", headers=tenant.headers, json=chat())
        assert answer.status_code == 200

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BYOROUTER_")}
        # The CLI finds the stack through .byorouter/dev.json in its working directory.
        return subprocess.run(
            [*CLI, "app", "limits", tenant.app_id, *args],
            cwd=first.state_dir.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    shown = cli()
    assert shown.returncode == 0, shown.stderr
    assert "app:             the gateway's default" in shown.stdout
    set_ = cli("--rps", "0.01", "--burst", "1", "--json")
    assert set_.returncode == 0, set_.stderr
    assert json.loads(set_.stdout)["rps"] == 0.01
    # Far sooner than the key cache's 30 s: the change event reaches every copy.
    for client in gateways:
        await until_refused(client, tenant, within_s=2.0)
    assert "0.01 requests a second, bursts of 1" in cli().stdout
