"""Limits the user sets on the Manage page, enforced by the router through the whole stack."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from tests.chaos.conftest import wait_for_copies
from tests.connect.conftest import confirm_manage_link, form_with_action, post_form
from tests.e2e.conftest import AppWithConnection, create_app_with_connection


async def set_limits_on_manage_page(
    browser: httpx.AsyncClient,
    api: httpx.AsyncClient,
    tenant: AppWithConnection,
    **values: str,
) -> str:
    """The app opens a manage link, the person saves the limits form; returns the page after."""
    link = await api.post(
        "/v1/connect/sessions",
        json={"connection_id": tenant.connection_id, "return_url": "http://localhost:3000/cb"},
        headers={"Authorization": f"Bearer {tenant.app_api_key}"},
    )
    assert link.status_code == 200, link.text
    opened = await confirm_manage_link(browser, link.json()["url"])
    assert opened.status_code == 303
    page = await browser.get("/manage")
    assert page.status_code == 200, page.text
    form = form_with_action(page.text, "/manage/limits")
    saved = await post_form(
        browser,
        form,
        {"limit_requests_per_day": "", "limit_tokens_per_month": "", "limit_models": ""} | values,
    )
    assert saved.status_code == 303, saved.text
    after = await browser.get(saved.headers["location"])
    assert "Limits saved" in after.text
    return after.text


async def chat(
    api: httpx.AsyncClient, tenant: AppWithConnection, model: str = "openai/gpt-4o-mini"
) -> httpx.Response:
    return await api.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hello there"}]},
        headers={
            "Authorization": f"Bearer {tenant.app_api_key}",
            "X-Byorouter-Connection": tenant.connection_id,
        },
    )


async def connection_view(api: httpx.AsyncClient, tenant: AppWithConnection) -> dict[str, Any]:
    got = await api.get(
        f"/v1/connections/{tenant.connection_id}",
        headers={"Authorization": f"Bearer {tenant.app_api_key}"},
    )
    assert got.status_code == 200, got.text
    body: dict[str, Any] = got.json()
    return body


def next_utc_midnight() -> str:
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    return f"{tomorrow.isoformat()}T00:00:00Z"


async def test_a_daily_request_cap_lets_exactly_n_through_across_two_router_copies(
    stack: Stack, bus: Bus, browser: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    tenant = await create_app_with_connection(bus, stack.upstream_base_url)
    await set_limits_on_manage_page(browser, api, tenant, limit_requests_per_day="3")
    copy = stack.start_copy("router")
    try:
        await wait_for_copies(stack, {"router": 2})
        answers = await asyncio.gather(*(chat(api, tenant) for _ in range(10)))
    finally:
        stack.stop_service(copy)

    assert sorted(a.status_code for a in answers) == [200] * 3 + [429] * 7
    refused = next(a for a in answers if a.status_code == 429)
    error = refused.json()["error"]
    assert error["code"] == "user_limit_reached"
    assert "3 requests a day" in error["message"]
    assert next_utc_midnight() in error["message"]
    assert 0 < int(refused.headers["retry-after"]) <= 86_400

    limits = (await connection_view(api, tenant))["limits"]
    assert limits["requests_per_day"] == 3
    assert limits["requests_today"] == 3
    assert limits["requests_left"] == 0
    assert limits["requests_reset_at"].startswith(next_utc_midnight()[:10])


async def test_raising_the_cap_on_the_manage_page_takes_effect_at_once(
    stack: Stack, bus: Bus, browser: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    tenant = await create_app_with_connection(bus, stack.upstream_base_url)
    await set_limits_on_manage_page(browser, api, tenant, limit_requests_per_day="1")
    assert (await chat(api, tenant)).status_code == 200
    assert (await chat(api, tenant)).status_code == 429

    page = await set_limits_on_manage_page(browser, api, tenant, limit_requests_per_day="2")
    assert "Requests today: 1 of 2" in page
    assert (await chat(api, tenant)).status_code == 200
    assert (await chat(api, tenant)).status_code == 429

    await set_limits_on_manage_page(browser, api, tenant)
    assert (await chat(api, tenant)).status_code == 200
    assert (await connection_view(api, tenant))["limits"] is None


async def test_a_monthly_token_cap_refuses_requests_once_the_usage_reaches_it(
    stack: Stack, bus: Bus, browser: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    tenant = await create_app_with_connection(bus, stack.upstream_base_url)
    await set_limits_on_manage_page(browser, api, tenant, limit_tokens_per_month="3")
    first = await chat(api, tenant)
    assert first.status_code == 200
    used = first.json()["usage"]["total_tokens"]
    assert used >= 3

    # Usage is recorded off the answer's path: the cap holds once keystore has it.
    deadline = time.monotonic() + 10
    while (limits := (await connection_view(api, tenant))["limits"])["tokens_this_month"] < used:
        assert time.monotonic() < deadline, limits
        await asyncio.sleep(0.1)
    assert limits["tokens_left"] == 0

    refused = await chat(api, tenant)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "user_limit_reached"
    assert "3 tokens a month" in error["message"]
    assert limits["tokens_reset_at"][:10] in error["message"]
    assert refused.headers["retry-after"]


async def test_a_model_the_user_did_not_allow_is_refused_naming_the_allowed_ones(
    stack: Stack, bus: Bus, browser: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    tenant = await create_app_with_connection(bus, stack.upstream_base_url)
    await set_limits_on_manage_page(
        browser, api, tenant, limit_models="openai/gpt-4o-mini\nopenai/gpt-4.1-nano"
    )
    refused = await chat(api, tenant, model="openai/gpt-4o")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "model_not_allowed"
    assert error["param"] == "model"
    assert "openai/gpt-4o-mini, openai/gpt-4.1-nano" in error["message"]

    assert (await chat(api, tenant, model="openai/gpt-4o-mini")).status_code == 200
    limits = (await connection_view(api, tenant))["limits"]
    assert limits["allowed_models"] == ["openai/gpt-4o-mini", "openai/gpt-4.1-nano"]
    assert limits["requests_per_day"] is None


async def test_a_limit_that_is_not_a_number_is_shown_as_a_problem(
    stack: Stack, bus: Bus, browser: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    tenant = await create_app_with_connection(bus, stack.upstream_base_url)
    link = await api.post(
        "/v1/connect/sessions",
        json={"connection_id": tenant.connection_id, "return_url": "http://localhost:3000/cb"},
        headers={"Authorization": f"Bearer {tenant.app_api_key}"},
    )
    await confirm_manage_link(browser, link.json()["url"])
    page = await browser.get("/manage")
    answer = await post_form(
        browser, form_with_action(page.text, "/manage/limits"), {"limit_requests_per_day": "ten"}
    )
    assert answer.status_code == 400
    assert "Requests a day must be a whole number" in answer.text
