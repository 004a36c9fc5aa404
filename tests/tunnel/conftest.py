"""The tunnel suite's own stack: every service as a process on its own NATS (with a user per
service, as in production), short heartbeats so a hung client is found in about a second, and
the fake OpenAI upstream playing the user's home model server.

Its own stack, not the session's shared one, because these tests kill, freeze and restart
processes (the tunnel service among them) and tune timers the other suites must not see.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus, connect
from tests.conftest import create_database
from tests.e2e.conftest import AppWithConnection, create_app_with_connection
from tests.tunnel.tunnel_client import HEARTBEAT_S, TunnelApi

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="session")
def tunnel_stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("tunnel-stack") / ".byorouter"
    stack = Stack(
        state_dir,
        database_url=create_database(database_url, "tunnel"),
        env_overrides={"BYOROUTER_LOG_LEVEL": "DEBUG"},
        service_env={
            "tunnel": {
                "BYOROUTER_HEARTBEAT_S": str(HEARTBEAT_S),
                "BYOROUTER_KEEPALIVE_INTERVAL_S": "1",
                "BYOROUTER_DRAIN_GRACE_S": "5",
                "BYOROUTER_MAX_CONCURRENCY": "256",
            },
            "router": {
                "BYOROUTER_KEEPALIVE_INTERVAL_S": "1",
                "BYOROUTER_REQUEST_DEADLINE_S": "20",
            },
        },
    )
    # The gateway's register answer names this stack's tunnel endpoint.
    ws_url = stack.tunnel_url.replace("http://", "ws://") + "/tunnel"
    stack.service_env.setdefault("gateway", {})["BYOROUTER_TUNNEL_PUBLIC_URL"] = ws_url
    # 200 concurrent streams on one connection: past a user's default limit (burst 100).
    stack.service_env["gateway"]["BYOROUTER_CONNECTION_RATE_LIMIT_RPS"] = "0"
    stack.service_env.setdefault("connect", {})["BYOROUTER_TUNNEL_PUBLIC_URL"] = ws_url
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
async def tunnel_bus(tunnel_stack: Stack) -> AsyncIterator[Bus]:
    nc = await connect(tunnel_stack.nats_settings(), "tunnel-tests")
    yield Bus(nc)
    await nc.close()


@pytest.fixture
async def tenant(tunnel_bus: Bus, tunnel_stack: Stack) -> AppWithConnection:
    """A fresh app whose connection has an OpenAI key with no preferred model: not a fallback
    target for `selfhosted/...`. Registering a tunnel adds the self-hosted provider."""
    return await create_app_with_connection(
        tunnel_bus, tunnel_stack.upstream_base_url, name="tunnel tests"
    )


@pytest.fixture
def api(tunnel_stack: Stack, tenant: AppWithConnection) -> TunnelApi:
    return TunnelApi(tunnel_stack, tenant)


@pytest.fixture
def client_dir(tmp_path: Path) -> Path:
    return tmp_path
