"""Headless Chromium for the browser suites: Debian's `chromium`, driven by Playwright.

No browser is downloaded: Playwright launches the system binary (`make browser` installs it).
Every test here is marked slow; `make test-slow` (and CI) runs them.

`browser_stack` is the whole stack with the example chat app (examples/chat-app/) on its own
NATS and database; the fake OpenAI upstream is part of it, a rejecting OpenAI-compatible server
and fake OpenRouter / Anthropic servers run in-process beside it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, async_playwright

from byorouter_cli.dev.demo import DemoFacts
from byorouter_cli.dev.stack import Stack
from byorouter_fakes.anthropic import FakeAnthropic
from byorouter_fakes.openrouter import FakeOpenRouter
from tests.conftest import create_database, drop_database

# Flags a headless Chromium needs on a machine with no network beyond loopback and, as root,
# no sandbox; without the background-networking ones it keeps dialling out and failing.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = os.environ.get("BYOROUTER_CHROMIUM") or shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (make browser installs it)")
        pytest.skip("chromium not installed: run `make browser`")
    return path


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(viewport={"width": 1100, "height": 900})
    yield ctx
    await ctx.close()


# --- the stack the browser suites drive ----------------------------------------------------


@pytest.fixture(scope="session")
def browser_stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole stack on its own NATS and database, with the example chat app on a free port.

    The example app plays the demo app, whose redirect URIs point at that port.
    """
    state_dir = tmp_path_factory.mktemp("browser-stack") / ".byorouter"
    owned_database = create_database(database_url, "browser")
    running = Stack(
        state_dir,
        database_url=owned_database,  # no nats_url: a NATS server of its own
        example_app=True,
        env_overrides={"BYOROUTER_LOG_LEVEL": "DEBUG", "BYOROUTER_LOG_FORMAT": "text"},
    ).start()
    try:
        yield running
    finally:
        running.stop()
        drop_database(database_url, owned_database)


@pytest.fixture(scope="session")
def demo_app(browser_stack: Stack) -> DemoFacts:
    """The app the example app is (its key lets a test call the gateway directly)."""
    return browser_stack.create_demo()


async def _rejecting_models(_: web.Request) -> web.Response:
    body = {
        "error": {
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    return web.json_response(body, status=401)


@pytest.fixture(scope="session")
async def rejecting_openai() -> AsyncIterator[str]:
    """An OpenAI-compatible base URL that answers every key with 401, as OpenAI does a bad key."""
    app = web.Application()
    app.router.add_get("/v1/models", _rejecting_models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


@pytest.fixture(scope="session")
async def fake_openrouter() -> AsyncIterator[FakeOpenRouter]:
    fake = FakeOpenRouter()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="session")
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where pages are photographed: BYOROUTER_SCREENSHOTS_DIR (docs/screenshots to refresh
    the README's pictures), else the test's temporary directory."""
    chosen = os.environ.get("BYOROUTER_SCREENSHOTS_DIR")
    target = Path(chosen) if chosen else tmp_path / "screenshots"
    target.mkdir(parents=True, exist_ok=True)
    return target
