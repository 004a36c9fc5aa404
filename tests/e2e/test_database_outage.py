"""PostgreSQL going away: apps get a clear 503, and what is already cached keeps working.

A stack of its own (NATS and PostgreSQL started for it), because this test stops its database.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus, connect
from tests.e2e.conftest import create_app_with_connection


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state: Path = tmp_path_factory.mktemp("outage") / ".byorouter"
    running = Stack(state, services=("keystore", "router", "gateway")).start()
    try:
        yield running
    finally:
        running.stop()


async def test_database_down_is_a_503_and_cached_requests_still_work(outage_stack: Any) -> None:
    nc = await connect(outage_stack.nats_settings(), "outage-tests")
    try:
        bus = Bus(nc)
        warm = await create_app_with_connection(bus, outage_stack.upstream_base_url)
        cold = await create_app_with_connection(bus, outage_stack.upstream_base_url)
    finally:
        await nc.close()
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "still here"}]}

    def headers(tenant: Any) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {tenant.app_api_key}",
            "X-Byorouter-Connection": tenant.connection_id,
        }

    async with httpx.AsyncClient(base_url=outage_stack.gateway_url, timeout=10) as http:
        first = await http.post("/v1/chat/completions", headers=headers(warm), json=body)
        assert first.status_code == 200

        outage_stack.stop_postgres()

        # The app key and the credentials of `warm` are cached: its users notice nothing.
        again = await http.post("/v1/chat/completions", headers=headers(warm), json=body)
        assert again.status_code == 200
        assert "still here" in again.text

        # A key never seen needs the database: a clear, retryable 503 in OpenAI's shape.
        refused = await http.post("/v1/chat/completions", headers=headers(cold), json=body)
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == "service_unavailable"
        assert "database is unavailable" in error["message"]
        assert cold.app_api_key not in refused.text
