"""`python -m byorouter_gateway` as an operator runs it: serves, traces and logs without secrets,
and stops cleanly on SIGTERM.

Runs on `tuned_stack`, whose gateway writes an access line per request and every service exports
its spans into its log.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from tests.gateway.gateway_client import chat_body, forged_key, new_tenant, sse_events


def spans(log_lines: list[str]) -> list[dict[str, Any]]:
    """The spans the console exporter wrote among a service's log lines (indented JSON)."""
    found: list[dict[str, Any]] = []
    block: list[str] | None = None
    for line in log_lines:
        if line == "{":
            block = [line]
        elif block is not None:
            block.append(line)
            if line == "}":
                found.append(orjson.loads("\n".join(block)))
                block = None
    return found


async def test_gateway_process_serves_logs_safely_and_stops_on_sigterm(
    tuned_stack: Stack, tuned_bus: Bus
) -> None:
    tenant = await new_tenant(tuned_bus, tuned_stack)
    forged = forged_key()
    try:
        async with httpx.AsyncClient(base_url=tuned_stack.gateway_url, timeout=10) as client:
            ok = await client.post(
                "/v1/chat/completions", headers=tenant.headers, json=chat_body(stream=True)
            )
            assert sse_events(ok.text)[-1] == "[DONE]"
            bad = await client.post(
                "/v1/chat/completions",
                headers={**tenant.headers, "Authorization": f"Bearer {forged}"},
                json=chat_body(),
            )
            assert bad.status_code == 401
        tuned_stack.stop_service("gateway")
        assert tuned_stack.exit_code("gateway") == 0
    finally:
        tuned_stack.start_service("gateway")

    tuned_stack.flush_logs()
    logged = "\n".join(tuned_stack.log_lines("gateway"))
    assert "POST /v1/chat/completions 200" in logged
    assert "POST /v1/chat/completions 401" in logged
    for name in ("gateway", "router", "keystore"):
        text = "\n".join(tuned_stack.log_lines(name))
        for key in (tenant.app_key, forged):
            assert key not in text, name
            assert key[-43:] not in text, name
    # One server span per request, named by its route, carrying who asked and which request...
    request_id = ok.headers["x-request-id"]
    (served,) = [
        s
        for s in spans(tuned_stack.log_lines("gateway"))
        if s["attributes"].get("byorouter.request_id") == request_id
    ]
    assert served["name"] == "POST /v1/chat/completions"
    assert served["attributes"]["http.route"] == "/v1/chat/completions"
    assert served["attributes"]["byorouter.app_id"] == tenant.app_id
    # ...and the router's side of the bus call continues the same trace.
    trace_id = served["context"]["trace_id"]
    routed = [s for s in spans(tuned_stack.log_lines("router")) if s["name"].startswith("chat ")]
    assert trace_id in [s["context"]["trace_id"] for s in routed]
