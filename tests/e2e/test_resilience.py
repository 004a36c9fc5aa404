"""What an app sees when part of BYORouter is down: a fast, clear error, never a hang."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.e2e.conftest import AppWithConnection


async def test_router_down_is_503_within_a_second_then_recovers(
    stack: Any, tenant: AppWithConnection
) -> None:
    headers = {
        "Authorization": f"Bearer {tenant.app_api_key}",
        "X-Byorouter-Connection": tenant.connection_id,
    }
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as http:
        # Warm the app-key cache so the only thing missing below is the router.
        assert (
            await http.post("/v1/chat/completions", headers=headers, json=body)
        ).status_code == 200
        stack.stop_service("router")
        try:
            for stream in (False, True):
                started = time.monotonic()
                response = await http.post(
                    "/v1/chat/completions", headers=headers, json={**body, "stream": stream}
                )
                elapsed = time.monotonic() - started
                assert response.status_code == 503
                assert response.json()["error"]["code"] == "service_unavailable"
                assert elapsed < 1.0
        finally:
            stack.start_service("router")
        ok = await http.post("/v1/chat/completions", headers=headers, json=body)
        assert ok.status_code == 200
