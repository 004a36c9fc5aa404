"""Seed 000's chatbot as the Next.js example (examples/nextjs-chat/), in a real browser.

The app is type-checked (`tsc --noEmit`), built (`next build`) and started (`next start`) against
the browser stack as an app of its own; a person connects a key through the real Connect pages,
chats and watches the answer stream in, opens "Manage API Keys" and disconnects.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, expect

from byorouter_cli.backends import free_port
from byorouter_cli.dev.admin_bus import connect_admin, run_sync
from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus
from byorouter_common.contracts import keystore as ks
from tests.browser.test_connect_story import (
    TEST_WAIT_MS,
    confirm_manage_link,
    enter_openai,
    new_key,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

APP_DIR = Path(__file__).resolve().parents[2] / "examples" / "nextjs-chat"
APP_NAME = "Next.js chat"
CALLBACK_PATH = "/api/byorouter/callback"
# `next build` on a busy two-core machine takes about a minute.
BUILD_TIMEOUT_S = 600


@dataclass(frozen=True)
class NextApp:
    url: str
    app_api_key: str
    client_id: str


def require_node_modules() -> Path:
    """The example's `node_modules/.bin`, installed by `make install` (`npm ci`)."""
    missing = None
    if shutil.which("node") is None or shutil.which("npm") is None:
        missing = "node and npm are required for the Next.js example"
    elif not (APP_DIR / "node_modules" / ".installed").exists():
        missing = "the Next.js example's packages are not installed: run `make install`"
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} (CI runs it)")
        pytest.skip(missing)
    return APP_DIR / "node_modules" / ".bin"


def register_app(stack: Stack, port: int) -> ks.AppCreated:
    """A BYORouter app whose one redirect URI is the example's callback on `port`."""

    async def create() -> ks.AppCreated:
        nc = await connect_admin(stack.nats_settings())
        try:
            return await Bus(nc, timeout_s=10.0).request(
                ks.APP_CREATE,
                ks.AppCreate(
                    name=APP_NAME, redirect_uris=[f"http://127.0.0.1:{port}{CALLBACK_PATH}"]
                ),
            )
        finally:
            await nc.close()

    return run_sync(create)


def run_step(argv: list[str], env: dict[str, str], log: Path) -> float:
    """Runs one step of the build in the example's folder; the seconds it took."""
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(
            argv,
            cwd=APP_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT_S,
        )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed:\n{log.read_text()[-4000:]}")
    return time.monotonic() - started


def wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"next start exited:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/api/byorouter/status", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"next start did not answer within 60 s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def nextjs_app(browser_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NextApp]:
    """The example, type-checked, built and started as its own BYORouter app on a free port."""
    bin_dir = require_node_modules()
    logs = tmp_path_factory.mktemp("nextjs-chat")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = register_app(browser_stack, port)
    env = {
        **os.environ,
        "NEXT_TELEMETRY_DISABLED": "1",
        "BYOROUTER_URL": browser_stack.gateway_url,
        "BYOROUTER_CONNECT_URL": browser_stack.connect_url,
        "BYOROUTER_APP_KEY": app.app_api_key.get_secret_value(),
        "BYOROUTER_CLIENT_ID": app.client_id,
        "BYOROUTER_REDIRECT_URI": url + CALLBACK_PATH,
    }
    typecheck_s = run_step([str(bin_dir / "tsc"), "--noEmit"], env, logs / "tsc.log")
    build_s = run_step([str(bin_dir / "next"), "build"], env, logs / "build.log")
    print(f"nextjs-chat: tsc --noEmit {typecheck_s:.1f} s, next build {build_s:.1f} s")
    log = logs / "start.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(bin_dir / "next"), "start", "-H", "127.0.0.1", "-p", str(port)],
            cwd=APP_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_serving(url, process, log)
        yield NextApp(url, app.app_api_key.get_secret_value(), app.client_id)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def status_of(page: Page, app: NextApp) -> dict[str, object]:
    answer = await page.request.get(f"{app.url}/api/byorouter/status")
    body: dict[str, object] = await answer.json()
    return body


async def connect_through_connect(page: Page, stack: Stack, app: NextApp, key: str) -> str:
    """From the app's connect prompt through the consent page and back; the connection id."""
    await page.goto(app.url)
    await expect(
        page.get_by_role("heading", name="Connect your API keys to start chatting")
    ).to_be_visible()
    await expect(page.locator("#connection-status")).to_have_text("Not connected")
    await page.get_by_role("link", name="Connect API Keys").click()
    await page.wait_for_url(f"{stack.connect_url}/authorize?*")
    await expect(page.get_by_role("heading", level=1)).to_have_text(
        f"Connect your AI keys to {APP_NAME}"
    )
    await enter_openai(page, key, stack.upstream_base_url)
    await page.get_by_role("button", name="Connect", exact=True).click()
    await page.wait_for_url(f"{app.url}/")
    await expect(page.locator("#connection-status")).to_have_text("API keys connected")
    await expect(page.locator("#notice")).to_have_text("Your API keys are connected.")
    status = await status_of(page, app)
    assert status["connected"] is True
    connection_id = str(status["connectionId"])
    assert connection_id.startswith("conn_")
    return connection_id


def chat_status(stack: Stack, app: NextApp, connection_id: str) -> int:
    """What the gateway answers this app's chat with `connection_id` (200, or 404 once gone)."""
    return httpx.post(
        f"{stack.gateway_url}/v1/chat/completions",
        headers={
            "Authorization": f"Bearer {app.app_api_key}",
            "X-Byorouter-Connection": connection_id,
        },
        json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    ).status_code


async def test_a_person_connects_chats_streamed_manages_and_disconnects_in_the_nextjs_app(
    context: BrowserContext, browser_stack: Stack, nextjs_app: NextApp
) -> None:
    stack, app = browser_stack, nextjs_app
    page = await context.new_page()
    visited: list[str] = []
    page.on("request", lambda request: visited.append(request.url))
    key = new_key()
    connection_id = await connect_through_connect(page, stack, app, key)

    # The model picker lists what the connection offers; the fake echoes the message.
    await expect(page.locator("#model option[value='openai/gpt-4o-mini']")).to_be_attached()
    await page.get_by_label("Model").select_option("openai/gpt-4o-mini")
    await page.get_by_label("Message").fill("Tell me about my portfolio please")
    await page.get_by_role("button", name="Send").click()
    reply = page.locator("li.message.assistant.done .text").last
    await expect(reply).to_have_text("Tell me about my portfolio please", timeout=TEST_WAIT_MS)

    # The app's chat route streams: the answer comes as many text deltas, not one block.
    answer = await page.request.post(
        f"{app.url}/api/chat",
        headers={"Origin": app.url, "Content-Type": "application/json"},
        data=json.dumps(
            {
                "model": "openai/gpt-4o-mini",
                "messages": [
                    {
                        "id": "m1",
                        "role": "user",
                        "parts": [{"type": "text", "text": "one two three"}],
                    }
                ],
            }
        ),
    )
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line.removeprefix("data: "))
        for line in (await answer.text()).splitlines()
        if line.startswith("data: {")
    ]
    deltas = [e["delta"] for e in events if e["type"] == "text-delta"]
    assert len(deltas) > 1
    assert "".join(deltas) == "one two three"
    # A request from another site's page is refused, even with the user's cookie.
    forged = await page.request.post(
        f"{app.url}/api/chat", headers={"Origin": "http://evil.example"}, data="{}"
    )
    assert forged.status == 403

    # The app key stays on the app's server: not in the page, not in a cookie.
    assert app.app_api_key not in await page.content()
    assert all(app.app_api_key not in c["value"] for c in await context.cookies())

    # Manage API Keys: a one-time link to the connection on the Connect page.
    await page.get_by_role("button", name="Manage API Keys").click()
    await confirm_manage_link(page, stack, APP_NAME)
    row = page.locator("#row-openai")
    await expect(row.locator("code.masked")).to_have_text(f"sk-...{key[-4:]}")
    await expect(row).to_contain_text("Working")

    # Disconnect in the app: it says so, offers to connect again, and the gateway refuses it.
    await page.goto(app.url)
    await expect(page.locator("#connection-status")).to_have_text("API keys connected")
    await page.get_by_role("button", name="Disconnect").click()
    await expect(page.locator("#notice")).to_have_text(
        "Disconnected. Your keys were erased from BYORouter."
    )
    await expect(page.locator("#connection-status")).to_have_text("Not connected")
    await expect(page.get_by_role("link", name="Connect API Keys")).to_be_visible()
    assert (await status_of(page, app))["connected"] is False
    assert chat_status(stack, app, connection_id) == 404

    # No key and no connection id ever travelled in a URL the browser opened.
    assert visited
    for url in visited:
        assert key not in url
        assert "conn_" not in urlsplit(url).query


async def test_a_disconnect_on_the_connect_page_shows_in_the_nextjs_app(
    context: BrowserContext, browser_stack: Stack, nextjs_app: NextApp
) -> None:
    stack, app = browser_stack, nextjs_app
    page = await context.new_page()
    connection_id = await connect_through_connect(page, stack, app, new_key())
    assert chat_status(stack, app, connection_id) == 200

    await page.get_by_role("button", name="Manage API Keys").click()
    await confirm_manage_link(page, stack, APP_NAME)
    await page.get_by_role("link", name="Disconnect…").click()
    await page.get_by_role("button", name="Yes, disconnect").click()
    await page.get_by_role("link", name=f"Return to {APP_NAME}").click()

    # The return link says what happened (?byorouter=disconnected); the gateway confirms it,
    # and the page takes the parameter out of the address bar.
    await expect(page.locator("#notice")).to_have_text(
        "You disconnected on the Connect page: your keys were erased."
    )
    await page.wait_for_url(f"{app.url}/")
    await expect(page.locator("#connection-status")).to_have_text("Not connected")
    await expect(page.get_by_role("link", name="Connect API Keys")).to_be_visible()


async def test_a_callback_with_a_state_this_browser_never_sent_connects_nothing(
    context: BrowserContext, nextjs_app: NextApp
) -> None:
    page = await context.new_page()
    await page.goto(f"{nextjs_app.url}{CALLBACK_PATH}?code=stolen&state=forged")
    await page.wait_for_url(f"{nextjs_app.url}/")
    await expect(page.locator("#notice")).to_have_text(
        "That sign-in link is stale or not yours; connect again."
    )
    await expect(page.locator("#connection-status")).to_have_text("Not connected")
