"""`python -m byorouter_gateway` as an operator runs it: serves, traces and logs without secrets,
and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from byorouter_cli.backends import free_port
from tests.gateway.conftest import FakeKeystore, FakeRouter, Tenant, chat_body, tag


async def test_gateway_process_serves_logs_safely_and_stops_on_sigterm(
    gateway_nats_url: str,
    keystore: FakeKeystore,
    router: FakeRouter,
    tenant: Tenant,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOROUTER_")}
    env.update(
        NATS_URL=gateway_nats_url,
        BYOROUTER_GATEWAY_PORT=str(port),
        BYOROUTER_ACCESS_LOG="true",
        BYOROUTER_LOG_LEVEL="DEBUG",
        BYOROUTER_LOG_FORMAT="text",
        BYOROUTER_OTEL_EXPORTER="console",
    )
    log_file = tmp_path / "gateway.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "byorouter_gateway"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            deadline = time.monotonic() + 20
            while True:
                assert process.poll() is None, log_file.read_text()
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log_file.read_text()
                await asyncio.sleep(0.1)
            t = tag()
            ok = await client.post(
                "/v1/chat/completions", headers=tenant.headers, json=chat_body(stream=True, user=t)
            )
            assert ok.text.endswith("data: [DONE]\n\n")
            bad = await client.post(
                "/v1/chat/completions",
                json=chat_body(),
                headers={**tenant.headers, "Authorization": f"Bearer {tenant.app_key}x"},
            )
            assert bad.status_code == 401
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
    logged = log_file.read_text()
    assert "POST /v1/chat/completions 200" in logged
    assert "POST /v1/chat/completions 401" in logged
    assert tenant.app_key not in logged
    assert tenant.app_key[-43:] not in logged
    # One server span per request, named by its route, carrying who asked and which request...
    assert '"name": "POST /v1/chat/completions"' in logged
    assert '"http.route": "/v1/chat/completions"' in logged
    assert f'"byorouter.request_id": "{ok.headers["x-request-id"]}"' in logged
    assert f'"byorouter.app_id": "{tenant.app_id}"' in logged
    # ...and the router's side of the bus call continues the same trace.
    traceparent = router.chats[t].traceparent
    assert traceparent is not None
    assert f'"trace_id": "0x{traceparent.split("-")[1]}"' in logged
