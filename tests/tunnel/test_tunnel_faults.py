"""When the user's box, its network or our tunnel service misbehave, the app's user is never left
hanging: a killed or frozen client ends its streams with an error event at once, an offline
tunnel falls back, rotation drops no stream, revocation closes sockets now, a second client keeps
a tunnel up, and a restarted tunnel service gets its clients back by itself."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus, connect
from byorouter_common.contracts import keystore as ks
from tests.e2e.conftest import AppWithConnection
from tests.tunnel.tunnel_client import HEARTBEAT_S, TunnelApi, TunnelClientProcess

Online = tuple[dict[str, Any], TunnelClientProcess]


@pytest.fixture
async def online(api: TunnelApi, client_dir: Path) -> AsyncIterator[Online]:
    registered, client = await api.online_client(client_dir)
    try:
        yield registered, client
    finally:
        client.stop()


def _body(model: str, content: str, *, stream: bool = True, user: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": content}],
    }
    if user:
        body["user"] = user
    return body


def _events(lines: list[str]) -> list[str]:
    return [line[6:] for line in lines if line.startswith("data: ")]


def _text(events: list[str]) -> str:
    text = ""
    for event in events:
        if event.startswith("{"):
            for choice in json.loads(event).get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
    return text


async def _stream_until_broken(
    api: TunnelApi, model: str, after_first: Any
) -> tuple[list[str], float]:
    """Stream `model`, call `after_first()` once the first event arrived; the remaining events
    and how long after that call the stream ended."""
    async with (
        api.http() as http,
        http.stream("POST", "/v1/chat/completions", json=_body(model, "a b c d e f g h i j")) as r,
    ):
        assert r.status_code == 200
        lines = r.aiter_lines()
        first = await anext(lines)
        assert first.startswith("data: {")
        after_first()
        broke = time.monotonic()
        rest = [line async for line in lines]
    return _events(rest), time.monotonic() - broke


async def test_killed_client_mid_stream_ends_it_with_an_error_event_within_a_second(
    api: TunnelApi, online: Online
) -> None:
    _, client = online
    events, took = await _stream_until_broken(api, "selfhosted/drip-300", client.kill)
    assert "[DONE]" not in events
    assert any('"error"' in event for event in events), events
    assert took < 1.0


async def test_frozen_client_is_found_by_heartbeat_and_its_stream_fails_cleanly(
    api: TunnelApi, online: Online
) -> None:
    registered, client = online
    # SIGSTOP: the socket stays open, nothing answers. Three heartbeats at most.
    events, took = await _stream_until_broken(api, "selfhosted/drip-300", client.freeze)
    assert "[DONE]" not in events
    assert any("tunnel_disconnected" in event for event in events), events
    assert took < 3 * HEARTBEAT_S + 0.5
    status = await api.status(registered["tunnel_id"])
    assert status["state"] == "offline"


async def _tenant_with(
    tunnel_bus: Bus, tunnel_stack: Stack, provider: ks.ProviderCredentialInput
) -> TunnelApi:
    """A new app whose one connection has `provider`, as its server calls the tunnel API."""
    app = await tunnel_bus.request(ks.APP_CREATE, ks.AppCreate(name="tunnel settings"))
    conn = await tunnel_bus.request(
        ks.CONNECTION_CREATE, ks.ConnectionCreate(app_id=app.app_id, providers=[provider])
    )
    tenant = AppWithConnection(
        app.client_id, app.app_id, app.app_api_key.get_secret_value(), conn.connection_id, ""
    )
    return TunnelApi(tunnel_stack, tenant)


def _selfhosted(base_url: str | None, key: str | None = None) -> ks.ProviderCredentialInput:
    return ks.ProviderCredentialInput(
        provider="selfhosted", base_url=base_url, api_key=SecretStr(key) if key else None
    )


async def test_offline_tunnel_falls_back_to_the_connections_next_provider(
    tunnel_bus: Bus, tunnel_stack: Stack
) -> None:
    openai = ks.ProviderCredentialInput(
        provider="openai",
        api_key=SecretStr("sk-fallback-" + secrets.token_hex(8)),
        base_url=tunnel_stack.upstream_base_url,
        preferred_model="gpt-4o-mini",
    )
    api = await _tenant_with(tunnel_bus, tunnel_stack, openai)
    await api.register()  # a selfhosted provider through a tunnel nobody runs
    async with api.http() as http:
        response = await http.post(
            "/v1/chat/completions", json=_body("selfhosted/gpt-4o-mini", "hi", stream=False)
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-byorouter-provider"] == "openai"


async def test_two_hundred_concurrent_streams_share_one_tunnel_without_cross_talk(
    api: TunnelApi, online: Online
) -> None:
    async def one(i: int) -> tuple[int, str, str]:
        words = " ".join(f"s{i}w{n}" for n in range(8))
        async with api.http(timeout_s=60) as http:
            response = await http.post(
                "/v1/chat/completions", json=_body("selfhosted/drip-20", words)
            )
        assert response.status_code == 200
        events = _events(response.text.splitlines())
        assert events[-1] == "[DONE]"
        return i, words, _text(events)

    results = await asyncio.gather(*(one(i) for i in range(200)))
    for _, words, text in results:
        # Each stream got exactly its own words, in order.
        assert text.split() == words.split()


async def test_rotation_during_long_streams_drops_none_and_then_the_old_token_fails(
    api: TunnelApi, online: Online, client_dir: Path, tunnel_stack: Stack
) -> None:
    registered, _ = online

    async def long_stream() -> list[str]:
        async with api.http() as http:
            response = await http.post(
                "/v1/chat/completions",
                json=_body("selfhosted/drip-150", "one two three four five six seven eight"),
            )
        return _events(response.text.splitlines())

    streams = [asyncio.create_task(long_stream()) for _ in range(3)]
    await asyncio.sleep(0.3)
    rotated = await api.rotate(registered["tunnel_id"], overlap_s=0)
    assert rotated["token"] != registered["token"]
    for events in await asyncio.gather(*streams):
        assert events[-1] == "[DONE]"
    # A new socket with the old token is refused, and the client says so and stops.
    stale = TunnelClientProcess(tunnel_stack, registered["token"], client_dir, name="stale")
    try:
        assert stale.wait_exit(15) == 2
        assert registered["token"] not in stale.log_text()
    finally:
        stale.stop()
    # The running client kept working through all of it.
    async with api.http() as http:
        response = await http.post(
            "/v1/chat/completions", json=_body("selfhosted/gpt-4o-mini", "still", stream=False)
        )
    assert response.status_code == 200


async def test_revoke_closes_every_socket_within_a_second(api: TunnelApi, online: Online) -> None:
    registered, client = online
    started = time.monotonic()
    await api.revoke(registered["tunnel_id"])
    await api.wait_state(registered["tunnel_id"], "offline", within_s=1.0)
    assert time.monotonic() - started < 1.5
    # Revocation is final for the client: it stops instead of retrying.
    assert client.wait_exit(10) == 2


async def test_two_clients_on_one_tunnel_keep_it_up_when_one_dies(
    api: TunnelApi, online: Online, client_dir: Path, tunnel_stack: Stack
) -> None:
    registered, first = online
    # The second box shares the first one's key file, as the docs say.
    second = TunnelClientProcess(tunnel_stack, registered["token"], client_dir, name="second")
    try:
        await api.wait_state(registered["tunnel_id"], "online", clients=2)
        first.kill()
        for _ in range(10):
            async with api.http() as http:
                response = await http.post(
                    "/v1/chat/completions",
                    json=_body("selfhosted/gpt-4o-mini", "after one died", stream=False),
                )
            assert response.status_code == 200, response.text
    finally:
        second.stop()


async def test_restarted_tunnel_service_gets_its_client_back_by_itself(
    api: TunnelApi, online: Online, tunnel_stack: Stack
) -> None:
    registered, _ = online
    tunnel_stack.stop_service("tunnel")
    restarted = time.monotonic()
    tunnel_stack.start_service("tunnel")
    await api.wait_state(registered["tunnel_id"], "online", within_s=15)
    back = time.monotonic() - restarted
    async with api.http() as http:
        response = await http.post(
            "/v1/chat/completions", json=_body("selfhosted/gpt-4o-mini", "back", stream=False)
        )
    assert response.status_code == 200
    assert back < 10


async def test_cancel_reaches_the_home_server(
    api: TunnelApi, online: Online, tunnel_stack: Stack
) -> None:
    tag = "cancel-" + secrets.token_hex(4)
    async with (
        api.http() as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json=_body("selfhosted/drip-300", "a b c d e f g h", user=tag),
        ) as response,
    ):
        lines = response.aiter_lines()
        await anext(lines)
    # The app's client went away after the first event: the fake home server must see its
    # request aborted, so the GPU stops generating.
    deadline = time.monotonic() + 5
    async with httpx.AsyncClient() as fake:
        while True:
            seen = await fake.get(
                tunnel_stack.upstream_url + "/_fake/disconnects", params={"tag": tag}
            )
            if seen.json().get("count", 0) >= 1:
                break
            assert time.monotonic() < deadline, "the home server's request was never aborted"
            await asyncio.sleep(0.1)


async def test_an_answer_over_a_mib_arrives_whole(api: TunnelApi, online: Online) -> None:
    words = " ".join(secrets.token_hex(8) for _ in range(10_000))  # about 170 KB
    async with api.http(timeout_s=60) as http:
        response = await http.post(
            "/v1/chat/completions",
            json=_body("selfhosted/repeat-8", words, stream=False),
        )
    assert response.status_code == 200, response.text[:500]
    content = response.json()["choices"][0]["message"]["content"]
    assert len(content) > 1024 * 1024
    assert content.split() == words.split() * 8


async def test_a_request_over_a_mib_crosses_the_tunnel_whole(
    api: TunnelApi, online: Online, tunnel_bus: Bus, tunnel_stack: Stack
) -> None:
    # Half again what one bus message carries: it crosses gateway -> router and router ->
    # tunnel in parts, reaches the client in frames, and the echoed answer comes back as large.
    content = "x" * (tunnel_bus.nc.max_payload * 3 // 2)
    uploads: list[int] = []

    async def count(msg: Any) -> None:
        uploads.append(len(msg.data))

    relay = await connect(tunnel_stack.nats_settings(user="tunnel"), "upload-watch")
    sub = await relay.subscribe("byorouter.tunnel.*.upload.>", cb=count)
    try:
        async with api.http(timeout_s=60) as http:
            response = await http.post(
                "/v1/chat/completions",
                json=_body("selfhosted/gpt-4o-mini", content, stream=False),
            )
    finally:
        await sub.unsubscribe()
        await relay.close()
    assert response.status_code == 200, response.text[:300]
    assert response.json()["choices"][0]["message"]["content"] == content
    assert uploads, "the sealed request fit one message: this test no longer tests splitting"


async def test_the_direct_url_serves_while_the_tunnel_is_offline(
    tunnel_bus: Bus, tunnel_stack: Stack
) -> None:
    api = await _tenant_with(tunnel_bus, tunnel_stack, _selfhosted(tunnel_stack.upstream_base_url))
    await api.register()  # the tunnel exists; no client runs it
    async with api.http() as http:
        response = await http.post(
            "/v1/chat/completions", json=_body("selfhosted/gpt-4o-mini", "direct", stream=False)
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-byorouter-provider"] == "selfhosted"


async def test_the_model_servers_key_reaches_it_inside_the_sealed_request(
    tunnel_bus: Bus, tunnel_stack: Stack, client_dir: Path
) -> None:
    server_key = "sk-home-" + secrets.token_hex(12)
    # A direct URL nobody answers on: with the tunnel online, the tunnel is the route.
    api = await _tenant_with(
        tunnel_bus, tunnel_stack, _selfhosted("http://127.0.0.1:9/v1", server_key)
    )
    registered, client = await api.online_client(client_dir)
    tag = "key-" + secrets.token_hex(4)
    seen: list[bytes] = []

    async def sniff(msg: Any) -> None:
        seen.append(msg.data)

    relay = await connect(tunnel_stack.nats_settings(user="tunnel"), "sniffer")
    sub = await relay.subscribe("byorouter.tunnel.>", cb=sniff)
    try:
        async with api.http() as http:
            response = await http.post(
                "/v1/chat/completions",
                json=_body("selfhosted/gpt-4o-mini", "keyed", stream=False, user=tag),
            )
        assert response.status_code == 200, response.text
    finally:
        await sub.unsubscribe()
        await relay.close()
        client.stop()
    async with httpx.AsyncClient() as fake:
        recorded = (
            await fake.get(tunnel_stack.upstream_url + "/_fake/requests", params={"tag": tag})
        ).json()
    assert recorded[-1]["headers"]["Authorization"] == f"Bearer {server_key}"
    assert seen
    assert not any(server_key.encode() in data for data in seen)
    assert registered["token"] not in client.log_text()
