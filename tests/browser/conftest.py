"""Headless Chromium for the browser suites: Debian's `chromium`, driven by Playwright.

No browser is downloaded: Playwright launches the system binary (`make browser` installs it).
Every test here is marked slow; `make test-slow` (and CI) runs them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, BrowserContext, async_playwright

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
