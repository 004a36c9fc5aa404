"""The consent page's Test button is limited per client IP and per app (429 with Retry-After).

Each test presses from loopback addresses of its own (127.0.0.x), so the budgets of the other
tests' client (127.0.0.1) are never spent here. The stack's Connect runs with the defaults.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import httpx
import pytest

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from byorouter_connect.settings import ConnectSettings
from tests.connect.conftest import Form, Pkce, RegisteredApp, consent, post_form, register_app

PER_IP = ConnectSettings.model_fields["provider_tests_per_ip_per_min"].default
PER_APP = ConnectSettings.model_fields["provider_tests_per_app_per_min"].default

Browsers = Callable[[str], httpx.AsyncClient]


@pytest.fixture
async def browser_at(stack: Stack) -> AsyncIterator[Browsers]:
    """`browser_at("127.0.0.7")`: a cookie-keeping client whose requests come from that address."""
    async with AsyncExitStack() as clients:

        def at(address: str) -> httpx.AsyncClient:
            client = httpx.AsyncClient(
                base_url=stack.connect_url,
                transport=httpx.AsyncHTTPTransport(local_address=address),
                follow_redirects=False,
                timeout=30.0,
            )
            clients.push_async_callback(client.aclose)
            return client

        yield at


async def press_test(
    browser: httpx.AsyncClient, form: Form, *, as_json: bool = True
) -> httpx.Response:
    # A key too short to send anywhere: answered by Connect itself, so pressing is quick.
    headers = {"Accept": "application/json"} if as_json else {}
    return await post_form(
        browser,
        form,
        {"openai_api_key": "sk-x", "test": "openai"},
        action="/authorize/test",
        **headers,
    )


async def presses_until_refused(
    browser: httpx.AsyncClient, form: Form, at_most: int
) -> tuple[int, httpx.Response | None]:
    """Press Test until refused (or `at_most` times): how many passed, and the refusal."""
    for passed in range(at_most):
        answer = await press_test(browser, form)
        if answer.status_code != 200:
            return passed, answer
    return at_most, None


async def test_one_client_ip_gets_429_after_its_tests_per_minute(
    browser_at: Browsers, app: RegisteredApp
) -> None:
    browser = browser_at("127.0.0.21")
    form = await consent(browser, app, Pkce.new())
    # The bucket refills while we press (PER_IP a minute), so allow a press or two more.
    passed, refused = await presses_until_refused(browser, form, PER_IP + 3)
    assert passed >= PER_IP
    assert refused is not None, f"still testing after {passed} presses"
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["ok"] is False
    assert "Too many tests" in refused.json()["message"]
    as_page = await press_test(browser, form, as_json=False)
    assert as_page.status_code == 429
    assert "retry-after" in as_page.headers
    assert "Too many tests" in as_page.text

    # Someone else on the same app is not slowed down.
    neighbour = browser_at("127.0.0.22")
    other_form = await consent(neighbour, app, Pkce.new())
    assert (await press_test(neighbour, other_form)).status_code == 200


async def test_one_app_gets_429_after_its_tests_per_minute_from_any_ips(
    browser_at: Browsers, bus: Bus
) -> None:
    busy = await register_app(bus)
    calm = await register_app(bus)
    passed = 0
    refused: httpx.Response | None = None
    # Never more than PER_IP from one address, so only the app's budget can run out; it
    # refills at PER_APP a minute while we press, hence the margin.
    for address in range(30, 30 + 2 * PER_APP // PER_IP):
        browser = browser_at(f"127.0.0.{address}")
        form = await consent(browser, busy, Pkce.new())
        from_here, refused = await presses_until_refused(browser, form, PER_IP - 1)
        passed += from_here
        if refused is not None:
            break
    assert passed >= PER_APP
    assert refused is not None, f"the app still tests after {passed} presses"
    assert refused.status_code == 429
    assert "retry-after" in refused.headers

    # Another app pressing from that same address is not slowed down.
    calm_form = await consent(browser, calm, Pkce.new())
    assert (await press_test(browser, calm_form)).status_code == 200
