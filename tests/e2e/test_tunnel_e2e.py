"""A model on the user's own box, through the tunnel: the whole stack, the real `byorouter-tunnel`
client as a process, the fake OpenAI upstream as the home server, the official `openai` SDK.

The tunnel is registered through the gateway's seed-002 API, the client gets its token from the
environment (never an argument), and every request below travels router -> NATS -> tunnel
service -> WebSocket -> client -> fake upstream and back, sealed end to end.
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from nats.aio.msg import Msg

from byorouter_common.bus import Bus
from tests.e2e.conftest import AppWithConnection, create_app_with_connection, sdk_client

pytestmark = pytest.mark.timeout(120)

_CLIENT = shutil.which("byorouter-tunnel") or str(
    Path(sys.executable).with_name("byorouter-tunnel")
)


def _ws_url(stack: Any) -> str:
    return stack.tunnel_url.replace("http://", "ws://") + "/tunnel"


class TunnelClientProcess:
    """`byorouter-tunnel` in front of the fake upstream, its token in its environment."""

    def __init__(self, stack: Any, token: str, key_file: Path, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BYOROUTER_")}
        env["BYOROUTER_TUNNEL_TOKEN"] = token
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop
        self.log = log
        self.process = subprocess.Popen(
            [
                _CLIENT,
                "--url",
                _ws_url(stack),
                "--upstream",
                stack.upstream_base_url,
                "--key-file",
                str(key_file),
                "--log-level",
                "debug",
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)
        self._log.close()


async def _register(stack: Any, tenant: AppWithConnection) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
        response = await http.post(
            "/api/tunnel/register",
            headers={
                "Authorization": f"Bearer {tenant.app_api_key}",
                "X-Byorouter-Connection": tenant.connection_id,
            },
            # Seed 002's body, as written.
            json={"userId": "user-1", "modelInfo": {"name": "gpt-4o-mini", "capabilities": []}},
        )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    registered: dict[str, Any] = response.json()
    return registered


async def _status(stack: Any, tenant: AppWithConnection, tunnel_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
        response = await http.get(
            f"/api/tunnel/status/{tunnel_id}",
            headers={
                "Authorization": f"Bearer {tenant.app_api_key}",
                "X-Byorouter-Connection": tenant.connection_id,
            },
        )
    assert response.status_code == 200, response.text
    status: dict[str, Any] = response.json()
    return status


async def _wait_state(
    stack: Any, tenant: AppWithConnection, tunnel_id: str, state: str, within_s: float = 15
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        status = await _status(stack, tenant, tunnel_id)
        if status["state"] == state:
            return status
        assert time.monotonic() < deadline, f"tunnel not {state} after {within_s}s: {status}"
        await asyncio.sleep(0.2)


@pytest.fixture
async def selfhosted_tenant(bus: Bus, stack: Any) -> AppWithConnection:
    """An app whose connection has an OpenAI key (no preferred model, so no fallback target for
    `selfhosted/...`); registering a tunnel adds the self-hosted provider."""
    return await create_app_with_connection(bus, stack.upstream_base_url, name="tunnel e2e")


@pytest.fixture
def client_files(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "client.key", tmp_path / "client.log"


@pytest.fixture
async def online(
    stack: Any, selfhosted_tenant: AppWithConnection, client_files: tuple[Path, Path]
) -> AsyncIterator[tuple[dict[str, Any], TunnelClientProcess]]:
    registered = await _register(stack, selfhosted_tenant)
    client = TunnelClientProcess(stack, registered["token"], *client_files)
    try:
        await _wait_state(stack, selfhosted_tenant, registered["tunnel_id"], "online")
        yield registered, client
    finally:
        client.stop()


async def test_register_gives_the_token_once_and_the_command_without_it_in_argv(
    stack: Any, selfhosted_tenant: AppWithConnection
) -> None:
    registered = await _register(stack, selfhosted_tenant)
    assert registered["tunnel_id"].startswith("tun_")
    assert registered["token"] in registered["command"]
    # The token is passed in the environment, never as an argument of the client.
    assert f"BYOROUTER_TUNNEL_TOKEN={registered['token']}" in registered["command"]
    assert "--token " not in registered["command"]
    status = await _status(stack, selfhosted_tenant, registered["tunnel_id"])
    assert status["state"] == "offline"
    assert registered["token"] not in str(status)


async def test_client_goes_online_and_its_models_are_listed_as_selfhosted(
    stack: Any,
    selfhosted_tenant: AppWithConnection,
    online: tuple[dict[str, Any], TunnelClientProcess],
) -> None:
    registered, _ = online
    status = await _status(stack, selfhosted_tenant, registered["tunnel_id"])
    assert status["state"] == "online"
    assert len(status["clients"]) == 1
    assert "gpt-4o-mini" in status["models"]
    async with sdk_client(stack, selfhosted_tenant) as sdk:
        models = [m.id async for m in sdk.models.list()]
    assert "selfhosted/gpt-4o-mini" in models


async def test_openai_sdk_streams_and_answers_through_the_tunnel(
    stack: Any,
    selfhosted_tenant: AppWithConnection,
    online: tuple[dict[str, Any], TunnelClientProcess],
) -> None:
    prompt = "tunnel canary " + secrets.token_hex(6)
    async with sdk_client(stack, selfhosted_tenant) as sdk:
        answer = await sdk.chat.completions.create(
            model="selfhosted/gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )
        assert answer.choices[0].message.content is not None
        assert prompt in answer.choices[0].message.content
        pieces = []
        async for chunk in await sdk.chat.completions.create(
            model="selfhosted/gpt-4o-mini",
            messages=[{"role": "user", "content": prompt}],
            stream=True,
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
    # The fake echoes the prompt: the streamed pieces add up to the same answer.
    assert "".join(pieces) == answer.choices[0].message.content


async def test_the_bus_never_carries_the_prompt_through_the_tunnel(
    stack: Any,
    bus: Bus,
    selfhosted_tenant: AppWithConnection,
    online: tuple[dict[str, Any], TunnelClientProcess],
) -> None:
    canary = "canary-" + secrets.token_hex(8)
    seen: list[bytes] = []

    async def sniff(msg: Msg) -> None:
        seen.append(msg.data)

    sub = await bus.nc.subscribe("byorouter.tunnel.>", cb=sniff)
    try:
        async with sdk_client(stack, selfhosted_tenant) as sdk:
            answer = await sdk.chat.completions.create(
                model="selfhosted/gpt-4o-mini", messages=[{"role": "user", "content": canary}]
            )
        assert canary in (answer.choices[0].message.content or "")
    finally:
        await sub.unsubscribe()
    assert seen, "the request did not cross the tunnel subjects"
    assert not any(canary.encode() in data for data in seen)


async def test_killed_client_mid_stream_ends_the_stream_with_an_error_not_done(
    stack: Any,
    selfhosted_tenant: AppWithConnection,
    online: tuple[dict[str, Any], TunnelClientProcess],
) -> None:
    _, client = online
    async with (
        httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            headers={
                "Authorization": f"Bearer {selfhosted_tenant.app_api_key}",
                "X-Byorouter-Connection": selfhosted_tenant.connection_id,
            },
            json={
                "model": "selfhosted/drip-300",
                "stream": True,
                "messages": [{"role": "user", "content": "one two three four five six"}],
            },
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()
        first = await anext(lines)
        assert first.startswith("data: ")
        client.process.kill()
        killed = time.monotonic()
        rest = [line async for line in lines]
        ended = time.monotonic()
    events = [line for line in rest if line.startswith("data: ")]
    assert "data: [DONE]" not in events
    assert any('"error"' in line for line in events), events
    assert ended - killed < 1.5


async def test_offline_tunnel_without_another_provider_is_a_503_tunnel_offline(
    stack: Any, selfhosted_tenant: AppWithConnection
) -> None:
    await _register(stack, selfhosted_tenant)
    async with sdk_client(stack, selfhosted_tenant) as sdk:
        with pytest.raises(openai.APIStatusError) as raised:
            await sdk.chat.completions.create(
                model="selfhosted/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
    assert raised.value.status_code == 503
    assert raised.value.code == "tunnel_offline"


async def test_the_client_can_be_installed_from_the_deployment(stack: Any) -> None:
    async with httpx.AsyncClient(base_url=stack.tunnel_url) as http:
        page = await http.get("/client")
        assert page.status_code == 200
        url = next(word for word in page.text.split() if word.endswith(".whl"))
        wheel = await http.get(url)
    assert wheel.status_code == 200
    with zipfile.ZipFile(io.BytesIO(wheel.content)) as archive:
        names = archive.namelist()
    assert "byorouter_tunnel_client/cli.py" in names
    assert any(name.endswith("entry_points.txt") for name in names)
