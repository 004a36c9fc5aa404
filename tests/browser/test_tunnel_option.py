"""The tunnel option in a real browser: a person chooses "My own server, through a secure
tunnel", is shown the token and the command once, runs it (the real client, in front of the fake
model server), watches the page say the tunnel is online with its models, and continues back to
the app, connected."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, expect

from byorouter_cli.dev.demo import DemoFacts
from byorouter_cli.dev.stack import Stack
from tests.browser.test_connect_story import TEST_WAIT_MS, open_consent, status_of

pytestmark = pytest.mark.slow


async def test_a_person_sets_up_a_tunnel_and_sees_it_come_online(
    context: BrowserContext,
    browser_stack: Stack,
    demo_app: DemoFacts,
    screenshots: Path,
    tmp_path: Path,
) -> None:
    stack = browser_stack
    page = await context.new_page()
    await open_consent(page, stack)
    await page.get_by_label("My own server, through a secure tunnel").check()
    await page.get_by_role("button", name="Connect", exact=True).click()

    command = await page.locator("#tunnel-command").inner_text()
    match = re.match(r"BYOROUTER_TUNNEL_TOKEN=(\S+) byorouter-tunnel --url (\S+) ", command)
    assert match, command
    token, url = match.groups()
    await expect(page.locator("#tunnel-state")).to_contain_text("Offline")
    # The token is in the page, never in its address.
    assert token not in page.url

    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOROUTER_")}
    env["BYOROUTER_TUNNEL_TOKEN"] = token
    client = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("byorouter-tunnel")),
            "--url",
            url,
            "--upstream",
            stack.upstream_base_url,
            "--key-file",
            str(tmp_path / "client.key"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # The page polls the status by itself: online, with the models the client found.
        await expect(page.locator("#tunnel-state")).to_contain_text("Online", timeout=TEST_WAIT_MS)
        await expect(page.locator("#tunnel-models")).to_contain_text("gpt-4o-mini")
        await page.screenshot(path=screenshots / "connect-tunnel.png", full_page=True)

        await page.get_by_role("button", name=re.compile("^Continue to")).click()
        await page.wait_for_url(f"{stack.example_app_url}/")
        await expect(page.locator("#connection-status")).to_have_text("API keys connected")
        assert (await status_of(page, stack))["connected"] is True
    finally:
        client.kill()
        client.wait(10)
