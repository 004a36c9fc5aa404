"""The chaos suite's own stack: its own NATS and PostgreSQL (so a test can restart them), two
router and two keystore copies, the restart policy `byorouter dev` uses (faster, so a test need
not wait out the production backoff), and the demo tunnel client in front of the fake upstream.

Timers are the production ones scaled down: the router sends a keep-alive every second and the
gateway gives up on a reply stream after three silent seconds, as production's 5 s and 15 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from byorouter_cli.dev.admin_bus import connect_admin, run_sync
from byorouter_cli.dev.processes import RestartPolicy
from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus, connect
from tests.chaos.load import Target
from tests.e2e.conftest import create_app_with_connection

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

STREAM_IDLE_S = 3.0
ROUTER_ENV = {
    "BYOROUTER_KEEPALIVE_INTERVAL_S": "1",
    "BYOROUTER_REQUEST_DEADLINE_S": "10",
    "BYOROUTER_UPSTREAM_FIRST_TOKEN_TIMEOUT_S": "4",
    "BYOROUTER_UPSTREAM_GAP_TIMEOUT_S": "2.5",
    "BYOROUTER_UPSTREAM_ANSWER_TIMEOUT_S": "20",
    # Connections are looked up again every few seconds, so a keystore fault shows.
    "BYOROUTER_CREDENTIAL_CACHE_TTL_S": "2",
}


@pytest.fixture(scope="session")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("chaos") / ".byorouter"
    stack = Stack(
        state_dir,
        env_overrides={"BYOROUTER_STREAM_IDLE_TIMEOUT_S": str(STREAM_IDLE_S)},
        service_env={
            "router": ROUTER_ENV,
            "gateway": {
                "BYOROUTER_AUTH_CACHE_TTL_S": "2",
                "BYOROUTER_RATE_LIMIT_RPS": "0",
                "BYOROUTER_CONNECTION_RATE_LIMIT_RPS": "0",
            },
            "tunnel": {"BYOROUTER_HEARTBEAT_S": "0.5", "BYOROUTER_KEEPALIVE_INTERVAL_S": "1"},
        },
        restart=RestartPolicy(first_delay_s=0.5, max_delay_s=4.0, healthy_after_s=5.0),
    )
    stack.start()
    try:
        for name in ("router", "keystore"):
            stack.start_copy(name)
        run_sync(lambda: wait_for_copies(stack, {"router": 2, "keystore": 2}))
        yield stack
    finally:
        stack.stop()


async def wait_for_copies(stack: Stack, copies: dict[str, int], within_s: float = 30) -> None:
    """Until each service has `copies[name]` processes answering discovery."""
    nc = await connect_admin(stack.nats_settings())
    try:
        deadline = time.monotonic() + within_s
        for name, wanted in copies.items():
            while len(await discovery_answers(nc, name)) < wanted:
                assert time.monotonic() < deadline, f"fewer than {wanted} {name} copies"
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def discovery_answers(nc: NatsClient, service: str, listen_s: float = 0.3) -> list[bytes]:
    answers: list[bytes] = []
    inbox = nc.new_inbox()

    async def collect(msg: object) -> None:
        answers.append(getattr(msg, "data", b""))

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(f"$SRV.PING.{service}", b"", reply=inbox)
        await asyncio.sleep(listen_s)
    except nats.errors.Error:
        pass
    finally:
        await sub.unsubscribe()
    return answers


@pytest.fixture
async def target(chaos_stack: Stack) -> Target:
    """A fresh app and connection per test, so its usage counts only that test's requests.
    Made on a connection of its own: a test that restarts NATS would break a shared one."""
    nc = await connect(chaos_stack.nats_settings(), "chaos-tests")
    try:
        tenant = await create_app_with_connection(
            Bus(nc), chaos_stack.upstream_base_url, name="chaos"
        )
    finally:
        await nc.close()
    return Target(chaos_stack.gateway_url, tenant.app_api_key, tenant.connection_id)


@pytest.fixture(scope="session")
def tunnel_target(chaos_stack: Stack) -> Target:
    """The demo connection, whose `selfhosted/...` models go through the demo tunnel client
    (a child of the stack like any service, so the restart policy covers it too)."""
    demo = chaos_stack.create_demo()
    chaos_stack.start_demo_tunnel(demo)
    return Target(chaos_stack.gateway_url, demo["app_api_key"], demo["connection_id"])


async def usage_totals(target: Target) -> tuple[int, int, int]:
    """The connection's recorded usage: (requests, partial requests, completion tokens)."""
    async with httpx.AsyncClient(base_url=target.gateway_url, timeout=10) as client:
        response = await client.get(
            f"/v1/connections/{target.connection_id}/usage",
            headers={"Authorization": f"Bearer {target.app_api_key}"},
        )
    response.raise_for_status()
    rows = response.json()["data"]
    return (
        sum(r["requests"] for r in rows),
        sum(r["partial_requests"] for r in rows),
        sum(r["completion_tokens"] for r in rows),
    )


async def recorded_requests(stack: Stack) -> list[dict[str, object]]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(stack.upstream_url + "/_fake/requests")
        response.raise_for_status()
        found: list[dict[str, object]] = response.json()
        return found


@pytest.fixture
def state_dir(chaos_stack: Stack) -> Path:
    return chaos_stack.state_dir
