"""The client's session with the tunnel service, over a real socket to a scripted fake service:
hello and welcome, heartbeats, session reuse and refresh, refusals, reconnects and drain."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from byorouter_fakes.openai import MODELS, FakeOpenAI
from byorouter_tunnel_client import __version__, e2e, protocol
from byorouter_tunnel_client.backoff import Backoff
from byorouter_tunnel_client.client import TunnelClient
from byorouter_tunnel_client.config import TunnelConfig
from byorouter_tunnel_client.connection import Refused
from byorouter_tunnel_client.credentials import Credentials
from tests.tunnel_client.fake_service import FakeTunnelService
from tests.tunnel_client.router_side import Wire, read_answer, request_frames

TOKEN = "tok_long_lived_secret"


def quick_backoff() -> Backoff:
    return Backoff(base_s=0.02, cap_s=0.05, fast_cap_s=0.01)


@pytest.fixture
def make_client(
    service: FakeTunnelService, openai_upstream: FakeOpenAI, tmp_path: Path
) -> Callable[..., TunnelClient]:
    def make(**overrides: Any) -> TunnelClient:
        settings: dict[str, Any] = {
            "url": service.url,
            "upstream": openai_upstream.base_url,
            "token": TOKEN,
            "key_file": tmp_path / "client.key",
            "handshake_timeout_s": 2.0,
        }
        settings.update(overrides)
        return TunnelClient(TunnelConfig(**settings), backoff=quick_backoff())

    return make


@asynccontextmanager
async def running(client: TunnelClient) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(client.run())
    try:
        yield task
    finally:
        client.stop()
        async with asyncio.timeout(5):
            await asyncio.gather(task, return_exceptions=True)


async def eventually(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not condition():
            await asyncio.sleep(0.01)


def refused(code: str, *, final: bool) -> dict[str, Any]:
    return {"t": "refused", "code": code, "message": f"refused: {code}", "final": final}


async def test_hello_reports_version_key_models_and_token_then_state_is_connected(
    service: FakeTunnelService, make_client: Callable[..., TunnelClient]
) -> None:
    client = make_client(max_concurrency=3)
    async with running(client) as task:
        await client.wait_connected(5)
        (hello,) = service.hellos
        assert hello == {
            "t": "hello",
            "version": __version__,
            "public_key": client.public_key,
            "models": list(MODELS),
            "max_concurrency": 3,
            "token": TOKEN,
        }
        assert service.user_agents == [f"byorouter-tunnel/{__version__}"]
        state = client.state
        assert state.connected
        assert state.tunnel_id == "tun_test1234"
        assert state.models == list(MODELS)
        assert state.fingerprint == e2e.fingerprint(client.public_key)
        client.stop()
        async with asyncio.timeout(5):
            await task
    assert not client.state.connected


async def test_an_unreachable_model_server_still_connects_with_no_models(
    service: FakeTunnelService, make_client: Callable[..., TunnelClient]
) -> None:
    client = make_client(upstream="http://127.0.0.1:9/v1")
    async with running(client):
        await client.wait_connected(5)
        assert service.hellos[0]["models"] == []


async def test_pings_are_answered_with_the_same_timestamp(
    service: FakeTunnelService, make_client: Callable[..., TunnelClient]
) -> None:
    client = make_client()
    async with running(client):
        await client.wait_connected(5)
        await service.send(0, {"t": "ping", "ts": 1234.5})
        header, _ = await service.next_frame(0)
        assert header == {"t": "pong", "ts": 1234.5}


async def test_a_reconnect_uses_the_session_not_the_long_lived_token(
    service: FakeTunnelService, make_client: Callable[..., TunnelClient]
) -> None:
    client = make_client()
    async with running(client):
        await client.wait_connected(5)
        await service.sockets[0].close()
        await service.wait_for_hellos(2)
    first, second = service.hellos
    assert first["token"] == TOKEN
    assert "token" not in second
    assert second["session"].startswith("sess_")


async def test_an_invalid_session_is_retried_at_once_with_the_token(
    service: FakeTunnelService, make_client: Callable[..., TunnelClient]
) -> None:
    client = make_client()
    client.credentials.got_session("sess_stale", 600)
    answers = iter([refused("session_invalid", final=False)])
    service.reply_to_hello = lambda hello: next(answers, None) or service.welcome(hello)
    async with running(client):
        await client.wait_connected(5)
    assert [("session" in h, "token" in h) for h in service.hellos] == [
        (True, False),
        (False, True),
    ]
    assert client.state.reconnects == 0


async def test_a_final_refusal_stops_the_client_without_retrying(
    service: FakeTunnelService, make_client: Callable[..., TunnelClient]
) -> None:
    service.reply_to_hello = lambda hello: refused("token_revoked", final=True)
    client = make_client()
    with pytest.raises(Refused) as stopped:
        async with asyncio.timeout(5):
            await client.run()
    assert stopped.value.final
    assert stopped.value.message == "refused: token_revoked"
    await asyncio.sleep(0.1)
    assert len(service.hellos) == 1


async def test_a_non_final_refusal_is_retried_with_backoff(
    service: FakeTunnelService, make_client: Callable[..., TunnelClient]
) -> None:
    answers = iter([refused("busy", final=False), refused("busy", final=False)])
    service.reply_to_hello = lambda hello: next(answers, None) or service.welcome(hello)
    client = make_client()
    async with running(client):
        await client.wait_connected(5)
    assert len(service.hellos) == 3
    assert client.state.reconnects == 2
    assert client.state.last_error == "refused: busy: refused: busy"


async def test_a_silent_service_is_declared_dead_after_three_heartbeats(
    service: FakeTunnelService, make_client: Callable[..., TunnelClient]
) -> None:
    service.heartbeat_s = 0.1
    client = make_client()
    async with running(client):
        await client.wait_connected(5)
        began = asyncio.get_running_loop().time()
        await service.wait_for_hellos(2)
        waited = asyncio.get_running_loop().time() - began
    assert 0.25 < waited < 2
    assert "no frame from the service" in (client.state.last_error or "")


async def test_pings_keep_a_quiet_session_alive(
    service: FakeTunnelService, make_client: Callable[..., TunnelClient]
) -> None:
    service.heartbeat_s = 0.1
    client = make_client()
    async with running(client):
        await client.wait_connected(5)
        for ts in range(8):
            await service.send(0, {"t": "ping", "ts": ts})
            await asyncio.sleep(0.08)
        assert len(service.hellos) == 1


async def test_the_session_is_refreshed_in_band_and_the_new_one_used_on_reconnect(
    service: FakeTunnelService, make_client: Callable[..., TunnelClient]
) -> None:
    client = make_client()
    async with running(client):
        await client.wait_connected(5)
        await service.send(0, {"t": "session", "session": "sess_pushed", "session_ttl_s": 60})
        await eventually(lambda: client.credentials.hello_fields() == {"session": "sess_pushed"})
        await service.sockets[0].close()
        await service.wait_for_hellos(2)
    assert service.hellos[1]["session"] == "sess_pushed"


async def test_refresh_is_asked_at_two_thirds_of_the_session_life(
    service: FakeTunnelService, make_client: Callable[..., TunnelClient]
) -> None:
    service.session_ttl_s = 1.5
    client = make_client()
    async with running(client):
        await client.wait_connected(5)
        began = asyncio.get_running_loop().time()
        header, _ = await service.next_frame(0, timeout_s=3)
        waited = asyncio.get_running_loop().time() - began
        assert header == {"t": "refresh"}
        assert 0.8 < waited < 1.3
        # The service's `session` answer keeps a usable session past the welcome's.
        await asyncio.sleep(0.6)
        assert client.credentials.has_session


async def test_a_request_round_trips_over_the_socket(
    service: FakeTunnelService, make_client: Callable[..., TunnelClient]
) -> None:
    client = make_client()
    async with running(client):
        await client.wait_connected(5)
        body = orjson.dumps({"model": "gpt-4o", "stream": True, "messages": []})
        frames, keys = request_frames(e2e.load_public_key(client.public_key), "ws1", body)
        for header, payload in frames:
            await service.send(0, header, payload)
        wire = Wire()
        while True:
            header, payload = await service.next_frame(0)
            await wire.send(protocol.encode(header, payload))
            if header["end"]:
                break
        answer = await read_answer(wire, keys)
    assert answer.status == 200
    assert answer.ended
    assert answer.body.endswith(b"data: [DONE]\n\n")


async def test_drain_opens_a_new_socket_while_the_old_one_finishes_its_stream(
    service: FakeTunnelService, make_client: Callable[..., TunnelClient]
) -> None:
    client = make_client()
    async with running(client):
        await client.wait_connected(5)
        body = orjson.dumps({"model": "drip-100", "stream": True, "messages": []})
        frames, keys = request_frames(e2e.load_public_key(client.public_key), "d1", body)
        for header, payload in frames:
            await service.send(0, header, payload)
        header, payload = await service.next_frame(0)
        keys.open(protocol.HEAD, payload)
        await service.send(0, {"t": "drain", "reconnect_after_ms": 50})
        await eventually(lambda: client.state.connections == 2)
        # The stream finishes on the old socket, which the client then closes.
        while True:
            header, payload = await service.next_frame(0)
            if header["end"]:
                assert keys.open(protocol.END, payload) == b"{}"
                break
            keys.open(protocol.DATA, payload)
        async with asyncio.timeout(5):
            await service.sockets[0].wait_closed()
        await eventually(lambda: client.state.connections == 1)
        assert client.state.connected
        assert client.state.reconnects == 0


async def test_the_command_exits_2_on_a_final_refusal_and_never_logs_secrets(
    service: FakeTunnelService, openai_upstream: FakeOpenAI, tmp_path: Path
) -> None:
    service.reply_to_hello = lambda hello: refused("bad_token", final=True)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "byorouter_tunnel_client.cli",
        "--url",
        service.url,
        "--upstream",
        openai_upstream.base_url,
        "--token-file",
        str(token_file),
        "--key-file",
        str(tmp_path / "k" / "client.key"),
        "--log-level",
        "debug",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "BYOROUTER_UPSTREAM_API_KEY": "sk-local-upstream"},
    )
    async with asyncio.timeout(20):
        out, err = await process.communicate()
    assert process.returncode == 2
    text = (out + err).decode()
    assert "refused this client (bad_token): refused: bad_token" in text
    assert "fingerprint" in text
    assert TOKEN not in text
    assert "sk-local-upstream" not in text
    assert len(service.hellos) == 1


def test_a_session_token_is_not_offered_when_about_to_expire() -> None:
    now = [100.0]
    credentials = Credentials("tok", clock=lambda: now[0])
    assert credentials.hello_fields() == {"token": "tok"}
    credentials.got_session("sess", 600)
    now[0] += 590
    assert credentials.hello_fields() == {"session": "sess"}
    now[0] += 6
    assert credentials.hello_fields() == {"token": "tok"}


async def test_a_5xx_at_the_upgrade_is_retried(
    service: FakeTunnelService, make_client: Callable[..., TunnelClient]
) -> None:
    rejections = iter([503, 502])

    def gate(connection: ServerConnection, request: Request) -> Response | None:
        status = next(rejections, None)
        return None if status is None else connection.respond(status, "starting up\n")

    async with serve(service.handle, "127.0.0.1", 0, process_request=gate) as gated:
        port = gated.sockets[0].getsockname()[1]
        client = make_client(url=f"ws://127.0.0.1:{port}/tunnel")
        async with running(client):
            await client.wait_connected(5)
    assert client.state.reconnects == 2
    assert client.state.last_error == "HTTP 502 at the WebSocket upgrade"
