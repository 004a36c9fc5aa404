"""The Connect story in a real browser: the example chat app, the Connect pages and the gateway.

A person opens the example app, connects an OpenAI-compatible key through Connect (testing a bad
and a good one first), chats and watches the answer stream in, replaces the key through "Manage
API Keys" and disconnects; after that the gateway refuses the connection. The pages are
photographed on the way (BYOROUTER_SCREENSHOTS_DIR=docs/screenshots refreshes the README's).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, expect

from byorouter_cli.dev.demo import DemoFacts
from byorouter_cli.dev.stack import Stack
from byorouter_fakes.openrouter import FakeOpenRouter

pytestmark = pytest.mark.slow

# Test buttons ask a provider (through the router): allow for a slow machine.
TEST_WAIT_MS = 15_000


def new_key() -> str:
    return "sk-test-" + secrets.token_hex(16)


async def open_consent(page: Page, stack: Stack) -> None:
    await page.goto(stack.example_app_url)
    await expect(
        page.get_by_role("heading", name="Connect your API keys to start chatting")
    ).to_be_visible()
    await page.get_by_role("link", name="Connect API Keys").click()
    await page.wait_for_url(f"{stack.connect_url}/authorize?*")


async def enter_openai(page: Page, key: str, base_url: str) -> None:
    await page.get_by_label("OpenAI API key").fill(key)
    openai = page.locator("#provider-openai")
    if await openai.locator("details.advanced").get_attribute("open") is None:
        await openai.get_by_text("Advanced: custom base URL").click()
    await page.get_by_label("OpenAI base URL (optional)").fill(base_url)


async def confirm_manage_link(
    page: Page, stack: Stack, app_name: str, photo: Path | None = None
) -> None:
    """Opening a manage link only asks whose keys it opens; say yes and land on /manage."""
    await page.wait_for_url(f"{stack.connect_url}/manage/start?token=*")
    await expect(page.get_by_role("heading", level=1)).to_have_text(
        f"Manage your AI keys for {app_name}?"
    )
    if photo is not None:
        await page.screenshot(path=photo, full_page=True)
    await page.get_by_role("button", name="Manage my keys").click()
    await page.wait_for_url(f"{stack.connect_url}/manage")


async def status_of(page: Page, stack: Stack) -> dict[str, object]:
    """What the example app says about this browser's connection (GET /api/byorouter/status)."""
    answer = await page.request.get(f"{stack.example_app_url}/api/byorouter/status")
    body: dict[str, object] = await answer.json()
    return body


async def chat(page: Page, text: str) -> str:
    """Sends `text` in the example app's chat box; returns the streamed reply when it is done."""
    await expect(page.locator("#model option[value='openai/gpt-4o-mini']")).to_be_attached()
    await page.get_by_label("Model").select_option("openai/gpt-4o-mini")
    await page.get_by_label("Message").fill(text)
    await page.get_by_role("button", name="Send").click()
    reply = page.locator("li.message.assistant.done .text").last
    await expect(reply).to_be_visible(timeout=TEST_WAIT_MS)
    # Each token event appended to the text as it arrived: more than one means it streamed.
    tokens = int(await reply.get_attribute("data-tokens") or "0")
    assert tokens > 1
    return await reply.inner_text()


def gateway_refuses(stack: Stack, demo: DemoFacts, connection_id: str) -> httpx.Response:
    return httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        headers={
            "Authorization": f"Bearer {demo['app_api_key']}",
            "X-Byorouter-Connection": connection_id,
        },
        json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )


async def test_a_person_connects_a_key_chats_replaces_the_key_and_disconnects(
    context: BrowserContext,
    browser_stack: Stack,
    demo_app: DemoFacts,
    rejecting_openai: str,
    screenshots: Path,
) -> None:
    stack = browser_stack
    page = await context.new_page()
    visited: list[str] = []
    page.on("request", lambda request: visited.append(request.url))
    await open_consent(page, stack)

    # The consent page says who is asking.
    await expect(page.get_by_role("heading", level=1)).to_have_text(
        "Connect your AI keys to BYORouter demo"
    )
    await expect(page.get_by_text("What BYORouter demo will be able to do")).to_be_visible()
    await page.screenshot(path=screenshots / "connect-consent.png", full_page=True)

    # A key the provider rejects, in plain words; then a good one.
    key = new_key()
    await enter_openai(page, key, rejecting_openai)
    await page.get_by_role("button", name="Test OpenAI key").click()
    result = page.locator("#result-openai")
    await expect(result).to_have_text("✗ OpenAI rejected this key (401)", timeout=TEST_WAIT_MS)
    await page.get_by_label("OpenAI base URL (optional)").fill(stack.upstream_base_url)
    await page.get_by_role("button", name="Test OpenAI key").click()
    await expect(result).to_have_text("✓ Key works — 5 models available", timeout=TEST_WAIT_MS)
    await page.locator("#provider-openai").screenshot(path=screenshots / "connect-test-result.png")

    # Connect: back in the example app, connected.
    await page.get_by_role("button", name="Connect", exact=True).click()
    await page.wait_for_url(f"{stack.example_app_url}/")
    await expect(page.locator("#connection-status")).to_have_text("API keys connected")
    status = await status_of(page, stack)
    assert status["connected"] is True
    connection_id = str(status["connectionId"])
    assert connection_id.startswith("conn_")

    # Chat: the fake upstream echoes the message, a word per streamed token.
    reply = await chat(page, "Tell me about my portfolio please")
    assert reply == "Tell me about my portfolio please"
    await page.screenshot(path=screenshots / "example-app-chat.png", full_page=True)
    # The app key stays on the app's server: not in the page, not in the session cookie.
    assert demo_app["app_api_key"] not in await page.content()
    assert all(demo_app["app_api_key"] not in c["value"] for c in await context.cookies())

    # Manage API Keys: the provider is shown masked; replace the key.
    await page.get_by_role("button", name="Manage API Keys").click()
    await confirm_manage_link(
        page, stack, "BYORouter demo", screenshots / "connect-manage-confirm.png"
    )
    row = page.locator("#row-openai")
    await expect(row.locator("code.masked")).to_have_text(f"sk-...{key[-4:]}")
    await expect(row).to_contain_text("Working")
    await page.screenshot(path=screenshots / "connect-manage.png", full_page=True)
    assert key not in await page.content()

    replacement = new_key()
    await page.get_by_label("New OpenAI API key").fill(replacement)
    await page.get_by_role("button", name="Replace OpenAI key").click()
    await expect(row.locator("code.masked")).to_have_text(f"sk-...{replacement[-4:]}")

    # Same connection id in the app, and it still chats.
    await page.goto(stack.example_app_url)
    assert (await status_of(page, stack))["connectionId"] == connection_id
    assert await chat(page, "still there?") == "still there?"

    # Disconnect in Connect, after a confirmation.
    await page.get_by_role("button", name="Manage API Keys").click()
    await confirm_manage_link(page, stack, "BYORouter demo")
    await page.get_by_role("link", name="Disconnect…").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(
        "Disconnect from BYORouter demo?"
    )
    await page.screenshot(path=screenshots / "connect-disconnect.png", full_page=True)
    await page.get_by_role("button", name="Yes, disconnect").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Disconnected")
    await page.screenshot(path=screenshots / "connect-done.png", full_page=True)

    # The gateway refuses the connection at once; the app, back home, says so.
    refused = gateway_refuses(stack, demo_app, connection_id)
    assert refused.status_code == 404
    await page.get_by_role("link", name="Return to BYORouter demo").click()
    # The return link says what happened (?byorouter=disconnected); the gateway confirms it.
    await page.wait_for_url(f"{stack.example_app_url}/?byorouter=disconnected")
    await expect(page.locator("#notice")).to_have_text(
        "You disconnected on the Connect page: your keys were erased."
    )
    await expect(page.get_by_role("link", name="Connect API Keys")).to_be_visible()
    assert (await status_of(page, stack))["connected"] is False

    # No key and no connection id ever travelled in a URL the browser opened.
    assert visited
    for url in visited:
        assert key not in url
        assert replacement not in url
        assert "conn_" not in urlsplit(url).query


async def test_the_apps_disconnect_button_makes_the_gateway_refuse_the_connection(
    context: BrowserContext, browser_stack: Stack, demo_app: DemoFacts
) -> None:
    stack = browser_stack
    page = await context.new_page()
    await open_consent(page, stack)
    await enter_openai(page, new_key(), stack.upstream_base_url)
    await page.get_by_role("button", name="Connect", exact=True).click()
    await page.wait_for_url(f"{stack.example_app_url}/")
    connection_id = str((await status_of(page, stack))["connectionId"])

    await page.get_by_role("button", name="Disconnect").click()
    await expect(page.locator("#notice")).to_have_text(
        "Disconnected. Your keys were erased from BYORouter."
    )
    assert gateway_refuses(stack, demo_app, connection_id).status_code == 404


async def test_cancel_on_the_consent_page_returns_to_the_app_unconnected(
    context: BrowserContext, browser_stack: Stack
) -> None:
    stack = browser_stack
    page = await context.new_page()
    await open_consent(page, stack)
    await page.get_by_role("button", name="Cancel").click()
    await page.wait_for_url(f"{stack.example_app_url}/")
    await expect(page.locator("#notice")).to_be_visible()
    await expect(page.locator("#connection-status")).to_have_text("Not connected")


async def test_an_openrouter_key_that_works_fills_the_model_picker(
    context: BrowserContext, browser_stack: Stack, fake_openrouter: FakeOpenRouter
) -> None:
    page = await context.new_page()
    await open_consent(page, browser_stack)
    openrouter = page.locator("#provider-openrouter")
    await page.get_by_label("OpenRouter API key").fill("sk-or-" + secrets.token_hex(16))
    await openrouter.get_by_text("Advanced: custom base URL").click()
    await page.get_by_label("OpenRouter base URL (optional)").fill(fake_openrouter.base_url)
    await page.get_by_role("button", name="Test OpenRouter key").click()
    await expect(page.locator("#result-openrouter")).to_have_text(
        "✓ Key works — 4 models available", timeout=TEST_WAIT_MS
    )
    options = page.locator("#openrouter_models option")
    await expect(options).to_have_count(4)
    assert "openai/gpt-4o-mini" in [await o.get_attribute("value") for o in await options.all()]


async def test_the_consent_form_can_be_completed_with_the_keyboard_alone(
    context: BrowserContext, browser_stack: Stack
) -> None:
    stack = browser_stack
    page = await context.new_page()
    await open_consent(page, stack)

    async def tab_to(selector: str, limit: int = 40) -> None:
        for _ in range(limit):
            await page.keyboard.press("Tab")
            if await page.evaluate(f"document.activeElement.matches({selector!r})"):
                return
        pytest.fail(f"Tab never reached {selector}")

    await tab_to("#openai_api_key")
    await page.keyboard.type(new_key())
    await tab_to("#provider-openai summary")
    await page.keyboard.press("Enter")  # opens "Advanced: custom base URL"
    await tab_to("#openai_base_url")
    await page.keyboard.type(stack.upstream_base_url)
    await page.keyboard.press("Enter")  # Enter in a field means Connect

    await page.wait_for_url(f"{stack.example_app_url}/")
    await expect(page.locator("#connection-status")).to_have_text("API keys connected")
