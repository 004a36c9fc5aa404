"""A provider key used through every path never shows up in a log line, trace or response.

The stack fixture runs every service at DEBUG with spans exported to its log, so everything
uvicorn, aiohttp, SQLAlchemy, FastStream and nats-py say is captured here too. Two canaries: one
shaped like an OpenAI key (which redaction also recognises) and one shaped like nothing in
particular, as a self-hosted server's key may be, so only never logging keys keeps it out.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.errors import ByoError


async def test_canary_keys_never_appear_in_logs_traces_or_responses(stack: Any, bus: Bus) -> None:
    shaped = "sk-canary" + secrets.token_hex(20)
    plain = "plaincanary" + secrets.token_hex(20)
    app = await bus.request(ks.APP_CREATE, ks.AppCreate(name="canary app"))
    app_key = app.app_api_key.get_secret_value()
    conn = await bus.request(
        ks.CONNECTION_CREATE,
        ks.ConnectionCreate(
            app_id=app.app_id,
            providers=[
                ks.ProviderCredentialInput(
                    provider="openai", api_key=SecretStr(shaped), base_url=stack.upstream_base_url
                ),
                ks.ProviderCredentialInput(
                    provider="selfhosted",
                    api_key=SecretStr(plain),
                    base_url=stack.upstream_base_url,
                ),
            ],
        ),
    )
    headers = {"Authorization": f"Bearer {app_key}", "X-Byorouter-Connection": conn.connection_id}
    seen: list[str] = []
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=15) as http:
        for model in ("gpt-4o-mini", "fail-401", "fail-400", "fail-429", "fail-500", "cut-after-2"):
            for provider in ("openai", "selfhosted"):
                for stream in (False, True):
                    response = await http.post(
                        "/v1/chat/completions",
                        headers=headers,
                        json={
                            "model": f"{provider}/{model}",
                            "stream": stream,
                            "messages": [{"role": "user", "content": "canary run"}],
                        },
                    )
                    seen.append(str(response.headers) + response.text)
        for path in (
            "/v1/models",
            f"/v1/connections/{conn.connection_id}",
            f"/v1/connections/{conn.connection_id}/providers",
        ):
            response = await http.get(path, headers=headers)
            assert response.status_code == 200, response.text
            seen.append(response.text)
        # Bad input around the key must not echo it either.
        response = await http.post(
            "/v1/chat/completions", headers=headers, content=b'{"model": "' + plain.encode() + b'"'
        )
        seen.append(response.text)
        response = await http.delete(f"/v1/connections/{conn.connection_id}", headers=headers)
        assert response.status_code == 200
        seen.append(response.text)
    try:
        await bus.request(
            ks.CONNECTION_CREATE,
            ks.ConnectionCreate(
                app_id=app.app_id,
                providers=[
                    ks.ProviderCredentialInput(
                        provider="selfhosted", api_key=SecretStr(plain), base_url="not a url"
                    )
                ],
            ),
        )
    except ByoError as exc:
        seen.append(exc.to_json().decode())

    stack.flush_logs()
    logs = {p.name: p.read_text(errors="replace") for p in Path(stack.logs_dir).glob("*.log")}
    assert logs, "the stack should have captured service logs"
    assert any("router" in name for name in logs)
    assert any(
        '"trace_id"' in text or "traceparent" in text or "span_id" in text for text in logs.values()
    ), "spans should be exported into the captured output"
    for canary in (shaped, plain, app_key):
        for name, text in logs.items():
            assert canary not in text, f"secret found in {name}"
        for body in seen:
            assert canary not in body


async def test_keys_sent_headless_never_appear_in_logs_or_responses(stack: Any, bus: Bus) -> None:
    from byorouter_common.contracts.keystore import headless as hl

    shaped = "sk-canary" + secrets.token_hex(20)
    plain = "plaincanary" + secrets.token_hex(20)
    app = await bus.request(ks.APP_CREATE, ks.AppCreate(name="headless canary app"))
    await bus.request(hl.APP_HEADLESS_SET, hl.AppHeadlessSet(client_id=app.client_id, enabled=True))
    headers = {"Authorization": f"Bearer {app.app_api_key.get_secret_value()}"}
    base = stack.upstream_base_url
    seen: list[str] = []
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=15) as http:
        created = await http.post(
            "/v1/connections",
            headers=headers,
            json={"providers": [{"provider": "openai", "api_key": shaped, "base_url": base}]},
        )
        assert created.status_code == 201, created.text
        conn = created.json()["id"]
        calls: list[tuple[str, str, Any]] = [
            (
                "PATCH",
                f"/v1/connections/{conn}",
                {"providers": [{"provider": "selfhosted", "api_key": plain, "base_url": base}]},
            ),
            (
                "PUT",
                f"/v1/connections/{conn}/providers/openai",
                {"api_key": plain, "base_url": "x"},
            ),
            (
                "POST",
                "/v1/connections",
                {"providers": [{"provider": "openai", "api_key": plain, "base_url": "not a url"}]},
            ),
            (
                "POST",
                "/v1/credentials/test",
                {"provider": "openai", "api_key": shaped, "base_url": base},
            ),
            ("POST", "/v1/credentials/test", {"provider": "openai", "api_key": plain, "bogus": 1}),
            ("POST", "/api/ai/test-connection", {"provider": "openrouter", "apiKey": plain}),
            (
                "POST",
                "/api/user-preferences/ai-provider",
                {"aiProvider": "openrouter", "openRouterApiKey": plain},
            ),
            (
                "POST",
                "/api/user-preferences/ai-provider",
                {"aiProvider": "openrouter", "openRouterApiKey": 5},
            ),
        ]
        seen.append(created.text + str(created.headers))
        for method, path, body in calls:
            response = await http.request(method, path, headers=headers, json=body)
            seen.append(response.text + str(response.headers))
    stack.flush_logs()
    logs = {p.name: p.read_text(errors="replace") for p in Path(stack.logs_dir).glob("*.log")}
    for canary in (shaped, plain):
        for name, text in logs.items():
            assert canary not in text, f"secret found in {name}"
        for body in seen:
            assert canary not in body
