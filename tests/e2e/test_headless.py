"""Headless connections and key tests through the whole stack, as seed 002's server would call them.

The operator allows the app (`APP_HEADLESS_SET`, what `byorouter app headless` sends); its
server then stores its user's keys with POST /v1/connections or seed 002's own body, changes
them with the id unchanged, and tests a key first. Providers are the stack's fakes.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts.keystore import headless as hl
from byorouter_fakes.openrouter import FakeOpenRouter
from tests.e2e.conftest import upstream_requests


async def _app(bus: Bus, *, headless: bool = True) -> tuple[str, dict[str, str]]:
    app = await bus.request(
        ks.APP_CREATE, ks.AppCreate(name="headless app", redirect_uris=["http://localhost:3000/cb"])
    )
    if headless:
        info = await bus.request(
            ks.APP_HEADLESS_SET, hl.AppHeadlessSet(client_id=app.client_id, enabled=True)
        )
        assert info.headless is True
    return app.app_id, {"Authorization": f"Bearer {app.app_api_key.get_secret_value()}"}


@pytest.fixture(scope="module")
async def openrouter() -> AsyncIterator[FakeOpenRouter]:
    fake = FakeOpenRouter(stream_chunks=2)
    await fake.start("127.0.0.1", 0)
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
async def rejecting_url() -> AsyncIterator[str]:
    """An OpenAI-compatible base URL that answers every key with 401, as OpenAI does."""

    async def models(_: web.Request) -> web.Response:
        body = {"error": {"message": "Incorrect API key provided.", "code": "invalid_api_key"}}
        return web.json_response(body, status=401)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def _chat(http: httpx.AsyncClient, headers: dict[str, str], conn: str, tag: str) -> None:
    response = await http.post(
        "/v1/chat/completions",
        headers={**headers, "X-Byorouter-Connection": conn},
        json={
            "model": "openai/gpt-4o-mini",
            "user": tag,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert response.status_code == 200, response.text


async def test_headless_connection_chats_and_its_replaced_key_keeps_the_id(
    stack: Any, bus: Bus
) -> None:
    _, headers = await _app(bus)
    first, second = "sk-first-" + secrets.token_hex(8), "sk-second-" + secrets.token_hex(8)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=15) as http:
        created = await http.post(
            "/v1/connections",
            headers=headers,
            json={
                "providers": [
                    {"provider": "openai", "api_key": first, "base_url": stack.upstream_base_url}
                ]
            },
        )
        assert created.status_code == 201, created.text
        conn = created.json()["id"]
        assert created.headers["location"] == f"/v1/connections/{conn}"
        [provider] = created.json()["providers"]
        assert provider["label"] is not None
        assert first not in created.text
        tag = "hl-" + secrets.token_hex(6)
        await _chat(http, headers, conn, tag)

        replaced = await http.patch(
            f"/v1/connections/{conn}",
            headers=headers,
            json={
                "providers": [
                    {"provider": "openai", "api_key": second, "base_url": stack.upstream_base_url}
                ]
            },
        )
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["id"] == conn
        assert replaced.json()["providers"][0]["label"] != provider["label"]
        seen = await upstream_requests(stack, tag)
        assert [r["headers"].get("Authorization") for r in seen] == [f"Bearer {first}"]

        # Routers hear of the change by an event, so a chat racing it may still use the old key
        # for milliseconds; within a second every chat uses the new one, on the same id.
        deadline = time.monotonic() + 2.0
        while True:
            after = "hl-" + secrets.token_hex(6)
            await _chat(http, headers, conn, after)
            [request] = await upstream_requests(stack, after)
            if request["headers"].get("Authorization") == f"Bearer {second}":
                break
            assert request["headers"].get("Authorization") == f"Bearer {first}"
            assert time.monotonic() < deadline, "the replaced key was still used after 2 s"
            await asyncio.sleep(0.05)


async def test_patch_adds_removes_providers_and_reorders_with_the_id_unchanged(
    stack: Any, bus: Bus
) -> None:
    _, headers = await _app(bus)
    base = stack.upstream_base_url
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=15) as http:
        created = await http.post(
            "/v1/connections",
            headers=headers,
            json={"providers": [{"provider": "openai", "api_key": "sk-a1", "base_url": base}]},
        )
        conn = created.json()["id"]
        changed = await http.patch(
            f"/v1/connections/{conn}",
            headers=headers,
            json={
                "providers": [{"provider": "selfhosted", "base_url": base}],
                "order": ["selfhosted", "openai"],
                "preferred_models": {"selfhosted": "gpt-4o-mini"},
            },
        )
        assert changed.status_code == 200, changed.text
        providers = changed.json()["providers"]
        assert [p["provider"] for p in providers] == ["selfhosted", "openai"]
        assert providers[0]["preferred_model"] == "gpt-4o-mini"
        removed = await http.delete(f"/v1/connections/{conn}/providers/openai", headers=headers)
        assert removed.status_code == 200, removed.text
        assert [p["provider"] for p in removed.json()["providers"]] == ["selfhosted"]
        last = await http.delete(f"/v1/connections/{conn}/providers/selfhosted", headers=headers)
        assert last.status_code == 400
        assert last.json()["error"]["code"] == "last_provider"
        # The same base-URL rule as the Connect page, naming the rule and never the URL.
        bad = await http.put(
            f"/v1/connections/{conn}/providers/selfhosted",
            headers=headers,
            json={"base_url": "http://host.example/v1?key=secretish"},
        )
        assert bad.status_code == 400
        assert "secretish" not in bad.text
        assert bad.json()["error"]["param"] == "providers[0].base_url"


async def test_an_app_without_headless_gets_403_in_openai_shape(stack: Any, bus: Bus) -> None:
    _, headers = await _app(bus, headless=False)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=15) as http:
        for path, body in (
            ("/v1/connections", {"providers": [{"provider": "openai", "api_key": "sk-x1"}]}),
            (
                "/api/user-preferences/ai-provider",
                {"aiProvider": "openrouter", "openRouterApiKey": "or-xxxxx"},
            ),
            ("/v1/credentials/test", {"provider": "openai", "api_key": "sk-x1"}),
            ("/api/ai/test-connection", {"provider": "openrouter", "apiKey": "or-xxxxx"}),
        ):
            response = await http.post(path, headers=headers, json=body)
            assert response.status_code == 403, (path, response.text)
            error = response.json()["error"]
            assert error["code"] == "headless_not_enabled"
            assert error["type"] == "permission_error"
            assert set(error) >= {"message", "type", "code", "param"}


async def test_seed_002_bodies_verbatim_create_then_change_the_connection(
    stack: Any, bus: Bus, openrouter: FakeOpenRouter
) -> None:
    _, headers = await _app(bus)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=15) as http:
        saved = await http.post(
            "/api/user-preferences/ai-provider",
            headers=headers,
            json={
                "aiProvider": "openrouter",
                "openRouterApiKey": "or-xxxxx",
                "openRouterModelPreference": "gpt-4",
                "fallbackToDefault": True,
            },
        )
        assert saved.status_code == 201, saved.text
        conn = saved.json()["id"]
        [provider] = saved.json()["providers"]
        assert provider["provider"] == "openrouter"
        assert provider["preferred_model"] == "gpt-4"
        assert "or-xxxxx" not in saved.text

        # Saved again for the same user (their connection named): the id stays, the new key,
        # base URL and model replace the old ones, and chat reaches OpenRouter with that key.
        again = await http.post(
            "/api/user-preferences/ai-provider",
            headers={**headers, "X-Byorouter-Connection": conn},
            json={
                "aiProvider": "openrouter",
                "openRouterApiKey": "or-yyyyy",
                "openRouterModelPreference": "meta-llama/llama-3.1-8b-instruct",
                "openRouterBaseUrl": openrouter.base_url,
                "fallbackToDefault": False,
            },
        )
        assert again.status_code == 200, again.text
        assert again.json()["id"] == conn
        tag = "seed-" + secrets.token_hex(6)
        chat = await http.post(
            "/v1/chat/completions",
            headers={**headers, "X-Byorouter-Connection": conn},
            json={
                "model": "openrouter/default",
                "user": tag,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert chat.status_code == 200, chat.text
        [seen] = openrouter.requests(tag)
        assert seen["headers"]["Authorization"] == "Bearer or-yyyyy"
        assert seen["body"]["model"] == "meta-llama/llama-3.1-8b-instruct"

        # Seed 002's test body as written: accepted, and answered in plain words (the test
        # stack has no internet, so openrouter.ai itself cannot be reached).
        tested = await http.post(
            "/api/ai/test-connection",
            headers=headers,
            json={"provider": "openrouter", "apiKey": "or-xxxxx", "modelId": "gpt-4"},
        )
        assert tested.status_code == 200, tested.text
        assert tested.json()["ok"] is False
        assert tested.json()["message"].startswith("Could not reach openrouter.ai")
        assert "or-xxxxx" not in tested.text


async def test_key_test_answers_good_rejected_and_unreachable_in_connects_words(
    stack: Any, bus: Bus, openrouter: FakeOpenRouter, rejecting_url: str
) -> None:
    _, headers = await _app(bus)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as http:
        good = await http.post(
            "/v1/credentials/test",
            headers=headers,
            json={
                "provider": "openai",
                "api_key": "sk-good-1",
                "base_url": stack.upstream_base_url,
                "model": "openai/gpt-4o-mini",
            },
        )
        assert good.status_code == 200, good.text
        answer = good.json()
        assert answer["ok"] is True
        assert answer["message"] == f"Key works — {answer['model_count']} models available"
        assert "gpt-4o-mini" in answer["models"]
        assert answer["model_available"] is True

        seed = await http.post(
            "/api/ai/test-connection",
            headers=headers,
            json={
                "provider": "openrouter",
                "apiKey": "or-good",
                "modelId": "gpt-4",
                "baseUrl": openrouter.base_url,
            },
        )
        assert seed.json()["ok"] is True, seed.text
        assert seed.json()["model_available"] is False  # OpenRouter names it openai/gpt-4...

        rejected = await http.post(
            "/v1/credentials/test",
            headers=headers,
            json={"provider": "openai", "api_key": "sk-bad-1", "base_url": rejecting_url},
        )
        assert rejected.status_code == 200
        assert rejected.json()["ok"] is False
        assert rejected.json()["message"] == "OpenAI rejected this key (401)"

        unreachable = await http.post(
            "/v1/credentials/test",
            headers=headers,
            json={"provider": "selfhosted", "base_url": _closed_port_url()},
        )
        assert unreachable.json()["ok"] is False
        assert unreachable.json()["message"].endswith("(connection refused)")
        assert unreachable.json()["message"].startswith("Could not reach http://127.0.0.1:")


async def test_key_tests_are_rate_limited_per_app(stack: Any, bus: Bus) -> None:
    _, headers = await _app(bus)
    _, other = await _app(bus)
    body = {"provider": "selfhosted", "base_url": _closed_port_url()}
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as http:
        statuses = [
            (await http.post("/v1/credentials/test", headers=headers, json=body)).status_code
            for _ in range(31)
        ]
        assert statuses[:30] == [200] * 30
        assert statuses[30] == 429
        # Another app has its own budget.
        response = await http.post("/v1/credentials/test", headers=other, json=body)
        assert response.status_code == 200
