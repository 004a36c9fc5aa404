"""What an operator scrapes and reads: every service's /metrics and its access lines.

After one streamed chat, one that fails (the provider answers 503, is asked again, fails
again) and one that falls back to a second provider, each service's counters have moved with
the labels a dashboard groups by, no label value anywhere is an id or a key, and each service
wrote an access line per request with its fields and without the key or the prompt.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.keystore import CREDENTIALS_RESOLVE
from tests.e2e.conftest import AppWithConnection, create_app_with_connection

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

REPOSITORY = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "router", "keystore", "connect", "tunnel")
# What no label value may look like: our ids (conn_, app_, req_, tun_, cli_, ... then a digit
# or a long random tail; `app_authenticate` is an endpoint), long hex or token-like runs,
# provider and app keys.
ID_OR_KEY = re.compile(
    r"(?i)^(?:conn|app|req|tun|cli|cred|whk|sess)_(?:[\w-]*[0-9]|[\w-]{16,})"
    r"|[0-9a-f]{16,}|[\w-]{33,}|sk-|byo_"
)


def scrape(stack: Stack, name: str) -> Samples:
    text = httpx.get(stack.metrics_url(name), timeout=5).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def access_lines(stack: Stack, name: str) -> list[dict[str, Any]]:
    lines = []
    for line in stack.log_lines(name):
        if not line.startswith("{") or line == "{":
            continue  # the console span exporter's indented JSON, or a stray line
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if entry.get("logger") == "byorouter.access":
            lines.append(entry)
    return lines


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
async def tenant(bus: Bus, stack: Stack) -> AppWithConnection:
    return await create_app_with_connection(bus, stack.upstream_base_url, name="metrics app")


async def connection_with_fallback(bus: Bus, stack: Stack, app_id: str) -> str:
    """A connection of `app_id` whose OpenAI key is asked first, then a self-hosted server."""
    created = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=app_id,
            providers=[
                ks.ProviderCredentialInput(
                    provider="openai",
                    api_key=SecretStr("sk-test-" + secrets.token_hex(16)),
                    base_url=stack.upstream_base_url,
                ),
                ks.ProviderCredentialInput(
                    provider="selfhosted",
                    base_url=stack.upstream_base_url,
                    preferred_model="gpt-4o-mini",
                ),
            ],
        ),
    )
    return created.connection_id


async def test_metrics_move_with_bounded_labels_and_every_request_has_an_access_line(
    stack: Stack, bus: Bus, tenant: AppWithConnection
) -> None:
    with_fallback = await connection_with_fallback(bus, stack, tenant.app_id)
    before = {name: scrape(stack, name) for name in SERVICES}
    prompt = "metrics-prompt-" + secrets.token_hex(8)
    headers = {
        "Authorization": f"Bearer {tenant.app_api_key}",
        "X-Byorouter-Connection": tenant.connection_id,
    }
    async with httpx.AsyncClient(timeout=30) as client:
        ok = await client.post(
            stack.gateway_url + "/v1/chat/completions",
            headers=headers,
            json={
                "model": "openai/gpt-4o-mini",
                "stream": True,
                "messages": [{"role": "user", "content": prompt}],
            },
        )
        assert ok.status_code == 200
        assert "data: [DONE]" in ok.text
        failed = await client.post(
            stack.gateway_url + "/v1/chat/completions",
            headers=headers,
            json={"model": "openai/fail-503", "messages": [{"role": "user", "content": prompt}]},
        )
        assert failed.status_code >= 500
        fell_back = await client.post(
            stack.gateway_url + "/v1/chat/completions",
            headers={**headers, "X-Byorouter-Connection": with_fallback},
            json={"model": "openai/fail-503", "messages": [{"role": "user", "content": prompt}]},
        )
        assert fell_back.status_code == 200
        assert fell_back.headers["x-byorouter-provider"] == "selfhosted"
        landing = await client.get(stack.connect_url + "/")
        assert landing.status_code == 200
        install = await client.get(stack.tunnel_url + "/client")
    failed_code = failed.json()["error"]["code"]

    def after_of(name: str) -> Samples:
        return scrape(stack, name)

    # The router counts a request as it finishes, just after the last byte went out.
    wait_for(
        lambda: (
            moved(
                before["router"],
                after_of("router"),
                "byorouter_router_requests_total",
                operation="chat",
                provider="openai",
                model="fail-503",
                outcome=failed_code,
            )
            >= 1
        ),
        "the router to count the failed request",
    )
    # Keystore records the streamed chat's usage from the durable stream within its flush.
    wait_for(
        lambda: (
            moved(
                before["keystore"],
                after_of("keystore"),
                "byorouter_keystore_usage_events_recorded_total",
            )
            >= 1
        ),
        "keystore to record the chat's usage",
    )
    after = {name: scrape(stack, name) for name in SERVICES}

    gateway, router, keystore = after["gateway"], after["router"], after["keystore"]
    chat_route = {"route": "/v1/chat/completions", "method": "POST"}
    g0 = before["gateway"]
    assert moved(g0, gateway, "byorouter_http_requests_total", **chat_route, status="200") >= 1
    assert (
        moved(
            g0,
            gateway,
            "byorouter_http_requests_total",
            **chat_route,
            status=str(failed.status_code),
        )
        >= 1
    )
    assert (
        moved(g0, gateway, "byorouter_http_request_seconds_count", route=chat_route["route"]) >= 2
    )
    # The gateway asked keystore about the new app key: a bus round trip it timed.
    assert (
        moved(
            g0,
            gateway,
            "byorouter_bus_request_seconds_count",
            endpoint="app_authenticate",
            outcome="ok",
        )
        >= 1
    )
    assert ("byorouter_gateway_streams_in_flight", frozenset()) in gateway

    r0 = before["router"]
    ok_labels = {"operation": "chat", "provider": "openai", "model": "gpt-4o-mini"}
    assert moved(r0, router, "byorouter_router_requests_total", **ok_labels, outcome="ok") >= 1
    assert moved(r0, router, "byorouter_router_retries_total", provider="openai") >= 1
    assert (
        moved(
            r0,
            router,
            "byorouter_router_fallbacks_total",
            from_provider="openai",
            to_provider="selfhosted",
        )
        >= 1
    )
    upstream_errors = sum(
        after_value - value(r0, name, **dict(labels))
        for (name, labels), after_value in router.items()
        if name == "byorouter_router_upstream_errors_total" and ("provider", "openai") in labels
    )
    assert upstream_errors >= 2  # the first call and its retry
    assert (
        moved(r0, router, "byorouter_router_time_to_first_token_seconds_count", provider="openai")
        >= 1
    )
    assert moved(r0, router, "byorouter_router_upstream_seconds_count", provider="openai") >= 3
    assert (
        moved(r0, router, "byorouter_router_tokens_total", provider="openai", direction="output")
        > 0
    )
    # The router resolved the new connection's keys from keystore, which counted the request.
    assert (
        moved(
            before["keystore"],
            keystore,
            "byorouter_bus_handled_requests_total",
            endpoint="credentials_resolve",
            outcome="ok",
        )
        >= 1
    )
    assert (
        moved(
            before["connect"],
            after["connect"],
            "byorouter_http_requests_total",
            route="/",
            method="GET",
            status="200",
        )
        >= 1
    )
    assert (
        moved(
            before["tunnel"],
            after["tunnel"],
            "byorouter_http_requests_total",
            route="/client",
            method="GET",
            status=str(install.status_code),
        )
        >= 1
    )
    assert ("byorouter_tunnel_sockets_online", frozenset()) in after["tunnel"]
    for name in SERVICES:
        # prometheus_client's process metrics, in every service.
        assert value(after[name], "process_cpu_seconds_total") > 0, name
        for label in _label_values(after[name]):
            assert not ID_OR_KEY.search(label), (name, label)
            assert label not in (tenant.connection_id, tenant.app_id, prompt), (name, label)

    stack.flush_logs()
    request_id = ok.headers["x-request-id"]
    failed_id = failed.headers["x-request-id"]
    lines = {name: access_lines(stack, name) for name in SERVICES}

    (gateway_ok,) = [e for e in lines["gateway"] if e.get("request_id") == request_id]
    assert gateway_ok["method"] == "POST"
    assert gateway_ok["route"] == "/v1/chat/completions"
    assert gateway_ok["status"] == 200
    assert gateway_ok["provider"] == "openai"
    assert gateway_ok["attempts"] == 1
    assert gateway_ok["duration_ms"] > 0
    (gateway_failed,) = [e for e in lines["gateway"] if e.get("request_id") == failed_id]
    assert gateway_failed["status"] == failed.status_code

    (router_ok,) = [e for e in lines["router"] if e.get("request_id") == request_id]
    assert router_ok["outcome"] == "ok"
    assert (router_ok["provider"], router_ok["model"]) == ("openai", "gpt-4o-mini")
    assert router_ok["attempts"] == 1
    (router_failed,) = [e for e in lines["router"] if e.get("request_id") == failed_id]
    assert router_failed["outcome"] == failed_code
    assert router_failed["attempts"] == 2
    fallback_id = fell_back.headers["x-request-id"]
    (router_fell_back,) = [e for e in lines["router"] if e.get("request_id") == fallback_id]
    assert (router_fell_back["provider"], router_fell_back["attempts"]) == ("selfhosted", 2)
    (gateway_fell_back,) = [e for e in lines["gateway"] if e.get("request_id") == fallback_id]
    assert (gateway_fell_back["provider"], gateway_fell_back["attempts"]) == ("selfhosted", 2)

    assert any(
        e.get("endpoint") == "credentials_resolve"
        and e.get("subject") == CREDENTIALS_RESOLVE.subject
        and e.get("outcome") == "ok"
        for e in lines["keystore"]
    )
    assert all("duration_ms" in e for e in lines["keystore"])
    assert any(e.get("route") == "/" and e.get("status") == 200 for e in lines["connect"])
    assert any(e.get("route") == "/client" for e in lines["tunnel"])

    for name in SERVICES:
        text = "\n".join(orjson.dumps(e).decode() for e in lines[name])
        for secret in (tenant.app_api_key, tenant.provider_key, prompt):
            assert secret not in text, name


def _label_values(samples: Samples) -> Iterable[str]:
    for _, labels in samples:
        for _, label in labels:
            yield label


def test_every_metric_the_dashboard_shows_is_served(stack: Stack) -> None:
    dashboard = orjson.loads((REPOSITORY / "deploy" / "grafana" / "byorouter.json").read_bytes())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    wanted = {
        re.sub(r"_(total|bucket|count|sum)$", "", name)
        for expr in exprs
        for name in re.findall(r"\b(?:byorouter|process)_[a-z_]+\b(?=[{\[)])", expr)
    }
    served = {
        family.name
        for name in SERVICES
        for family in text_string_to_metric_families(
            httpx.get(stack.metrics_url(name), timeout=5).text
        )
    }
    assert wanted, "no metric found in the dashboard's queries"
    assert wanted <= served, sorted(wanted - served)
