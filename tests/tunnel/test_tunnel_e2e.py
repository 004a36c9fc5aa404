"""A model on the user's own box, through the tunnel: the whole stack, the real `byorouter-tunnel`
client as a process, the fake OpenAI upstream as the home server, the official `openai` SDK.

The tunnel is registered through the gateway's seed-002 API, the client gets its token from the
environment (never an argument), and every request below travels router -> NATS -> tunnel
service -> WebSocket -> client -> fake upstream and back, sealed end to end.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import secrets
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from nats.aio.msg import Msg

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import connect
from byorouter_common.nats_permissions import inbox_prefix
from tests.tunnel.tunnel_client import SocketRecorder, TunnelApi, TunnelClientProcess

Online = tuple[dict[str, Any], TunnelClientProcess]


@pytest.fixture
async def online(api: TunnelApi, client_dir: Path) -> AsyncIterator[Online]:
    registered, client = await api.online_client(client_dir)
    try:
        yield registered, client
    finally:
        client.stop()


async def test_register_gives_the_token_once_and_the_command_passes_it_by_environment(
    api: TunnelApi,
) -> None:
    registered = await api.register()
    assert registered["tunnel_id"].startswith("tun_")
    assert registered["connect_url"].endswith("/tunnel")
    assert f"BYOROUTER_TUNNEL_TOKEN={registered['token']}" in registered["command"]
    assert "--token " not in registered["command"]
    status = await api.status(registered["tunnel_id"])
    assert status["state"] == "offline"
    assert registered["token"] not in str(status)


async def test_client_goes_online_and_its_models_are_listed_as_selfhosted(
    api: TunnelApi, online: Online
) -> None:
    registered, _ = online
    status = await api.status(registered["tunnel_id"])
    assert status["state"] == "online"
    assert len(status["clients"]) == 1
    assert status["clients"][0]["client_version"]
    assert "gpt-4o-mini" in status["models"]
    async with api.sdk() as sdk:
        models = [m.id async for m in sdk.models.list()]
    assert "selfhosted/gpt-4o-mini" in models


async def test_openai_sdk_streams_and_answers_through_the_tunnel(
    api: TunnelApi, online: Online
) -> None:
    prompt = "tunnel words " + secrets.token_hex(6)
    async with api.sdk() as sdk:
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
            stream_options={"include_usage": True},
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
    # The fake echoes the prompt: the streamed pieces add up to the same answer.
    assert "".join(pieces) == answer.choices[0].message.content


async def test_streamed_bytes_through_the_tunnel_equal_the_direct_route(
    tunnel_stack: Stack, api: TunnelApi, online: Online
) -> None:
    """Byte for byte: the same request straight to the upstream and through the tunnel."""
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "exactly these words please"}],
    }
    async with httpx.AsyncClient() as direct:
        upstream = await direct.post(
            tunnel_stack.upstream_base_url + "/chat/completions", json=body
        )
    async with api.http() as http:
        tunneled = await http.post(
            "/v1/chat/completions", json={**body, "model": "selfhosted/gpt-4o-mini"}
        )
    assert tunneled.status_code == 200
    assert tunneled.headers["x-byorouter-provider"] == "selfhosted"

    def contents(text: str) -> list[str]:
        import json

        out = []
        for line in text.splitlines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                out += [c["delta"].get("content") or "" for c in event.get("choices", [])]
        return out

    assert contents(tunneled.text) == contents(upstream.text)
    assert tunneled.text.rstrip().endswith("data: [DONE]")


async def test_the_bus_never_carries_the_prompt_or_the_answer_through_the_tunnel(
    tunnel_stack: Stack, api: TunnelApi, online: Online
) -> None:
    canary = "canary-" + secrets.token_hex(8)
    seen: list[bytes] = []

    async def sniff(msg: Msg) -> None:
        seen.append(msg.data)

    # With the relay's own credentials, as an operator of the tunnel service (or an intruder on
    # it) would have them: every request to every tunnel, and the replies on the way back.
    relay = await connect(tunnel_stack.nats_settings(user="tunnel"), "sniffer")
    sub = await relay.subscribe("byorouter.tunnel.>", cb=sniff)
    # And the router's inbox, where the sealed answer frames come back.
    router = await connect(tunnel_stack.nats_settings(user="router"), "sniffer")
    replies = await router.subscribe(inbox_prefix("router") + ".>", cb=sniff)
    try:
        async with api.sdk() as sdk:
            answer = await sdk.chat.completions.create(
                model="selfhosted/gpt-4o-mini", messages=[{"role": "user", "content": canary}]
            )
        assert canary in (answer.choices[0].message.content or "")
    finally:
        await sub.unsubscribe()
        await replies.unsubscribe()
        await relay.close()
        await router.close()
    assert seen, "the request did not cross the tunnel subjects"
    assert not any(canary.encode() in data for data in seen)


async def test_offline_tunnel_with_no_other_provider_is_a_503_tunnel_offline(
    api: TunnelApi,
) -> None:
    await api.register()
    async with api.sdk() as sdk:
        with pytest.raises(openai.APIStatusError) as raised:
            await sdk.chat.completions.create(
                model="selfhosted/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
    assert raised.value.status_code == 503
    assert raised.value.code == "tunnel_offline"


async def test_the_client_can_be_installed_from_the_deployment(tunnel_stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=tunnel_stack.tunnel_url) as http:
        page = await http.get("/client")
        assert page.status_code == 200
        # The page's command installs only what the lock's hashes allow.
        assert "pip install --require-hashes -r " in page.text
        requirements_url = next(w for w in page.text.split() if w.endswith("/requirements.txt"))
        requirements = (await http.get(requirements_url)).text
        url = next(w for w in requirements.split() if w.endswith(".whl"))
        wheel = await http.get(url)
    assert wheel.status_code == 200
    with zipfile.ZipFile(io.BytesIO(wheel.content)) as archive:
        names = archive.namelist()
    assert "byorouter_tunnel_client/cli.py" in names
    assert any(name.endswith("entry_points.txt") for name in names)
    # Every dependency is pinned with a hash, and the wheel carries its own.
    for dependency in ("cryptography==", "httpx==", "websockets=="):
        assert dependency in requirements
    assert f"--hash=sha256:{hashlib.sha256(wheel.content).hexdigest()}" in requirements


async def test_pip_installs_the_served_client_only_with_its_hash(
    tunnel_stack: Stack, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=tunnel_stack.tunnel_url) as http:
        requirements = (await http.get("/client/requirements.txt")).text
    # The client's own lines (its dependencies would need the public index, which CI may lack).
    own = requirements[requirements.index("byorouter-tunnel @") :]
    good = tmp_path / "good.txt"
    good.write_text(own)
    tampered = tmp_path / "tampered.txt"
    digest = own.split("sha256:")[1].strip()
    tampered.write_text(own.replace(digest, "0" * 64))

    def pip(requirements_file: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps"]
        command += ["--require-hashes", "--no-index", "-r", str(requirements_file)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    accepted = await asyncio.to_thread(pip, good)
    assert accepted.returncode == 0, accepted.stderr
    assert "byorouter-tunnel" in accepted.stdout
    refused = await asyncio.to_thread(pip, tampered)
    assert refused.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in refused.stderr


async def test_the_socket_never_carries_the_prompt_the_answer_or_the_server_key(
    tunnel_stack: Stack, api: TunnelApi, client_dir: Path
) -> None:
    recorder = SocketRecorder(tunnel_stack.ports.tunnel)
    await recorder.start()
    registered = await api.register()
    url = f"ws://127.0.0.1:{recorder.port}/tunnel"
    client = TunnelClientProcess(tunnel_stack, registered["token"], client_dir, url=url)
    canary = "socket-canary-" + secrets.token_hex(8)
    try:
        await api.wait_state(registered["tunnel_id"], "online")
        async with api.sdk() as sdk:
            answer = await sdk.chat.completions.create(
                model="selfhosted/gpt-4o-mini", messages=[{"role": "user", "content": canary}]
            )
        assert canary in (answer.choices[0].message.content or "")
    finally:
        client.stop()
        await recorder.stop()
    # The client's frames, unmasked, carried the answer; the service's carried the request.
    assert recorder.from_client
    assert recorder.to_client
    assert not any(canary.encode() in frame for frame in recorder.from_client)
    assert canary.encode() not in recorder.to_client
    # The long-lived token crossed once, in the first frame; reconnects use the session token.
    assert sum(registered["token"].encode() in frame for frame in recorder.from_client) == 1
