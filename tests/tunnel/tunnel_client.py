"""What the tunnel tests drive: the real `byorouter-tunnel` as a process, and the gateway's
tunnel API as an app's server calls it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from byorouter_cli.dev.stack import Stack
from tests.e2e.conftest import AppWithConnection

# The tunnel service pings every this often in the test stack; a client silent for 2.5 of
# them is dropped.
HEARTBEAT_S = 0.4

_CLIENT = shutil.which("byorouter-tunnel") or str(
    Path(sys.executable).with_name("byorouter-tunnel")
)


def ws_url(stack: Stack) -> str:
    return stack.tunnel_url.replace("http://", "ws://") + "/tunnel"


class TunnelClientProcess:
    """`byorouter-tunnel` in front of the fake upstream; its token only in its environment."""

    def __init__(
        self, stack: Stack, token: str, directory: Path, name: str = "client", url: str = ""
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BYOROUTER_")}
        env["BYOROUTER_TUNNEL_TOKEN"] = token
        self.log = directory / f"{name}.log"
        self._log = open(self.log, "ab")  # noqa: SIM115 - closed in stop
        self.argv = [
            _CLIENT,
            "--url",
            url or ws_url(stack),
            "--upstream",
            stack.upstream_base_url,
            "--key-file",
            str(directory / "client.key"),
            "--max-concurrency",
            "256",
            "--log-level",
            "debug",
        ]
        self.process = subprocess.Popen(
            self.argv, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text(errors="replace")

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def wait_exit(self, timeout_s: float) -> int:
        return self.process.wait(timeout_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)
        self._log.close()


class TunnelApi:
    """Seed 002's tunnel API on the gateway, and chat through it, as one app's server."""

    def __init__(self, stack: Stack, tenant: AppWithConnection) -> None:
        self.stack = stack
        self.tenant = tenant
        self.headers = {
            "Authorization": f"Bearer {tenant.app_api_key}",
            "X-Byorouter-Connection": tenant.connection_id,
        }

    def http(self, timeout_s: float = 30) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.stack.gateway_url, headers=self.headers, timeout=timeout_s
        )

    def sdk(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.stack.gateway_url + "/v1",
            api_key=self.tenant.app_api_key,
            default_headers={"X-Byorouter-Connection": self.tenant.connection_id},
            max_retries=0,
        )

    async def register(self) -> dict[str, Any]:
        async with self.http() as http:
            response = await http.post(
                "/api/tunnel/register",
                # Seed 002's body, as written.
                json={"userId": "user-1", "modelInfo": {"name": "gpt-4o-mini", "capabilities": []}},
            )
        assert response.status_code == 201, response.text
        assert response.headers["cache-control"] == "no-store"
        registered: dict[str, Any] = response.json()
        return registered

    async def status(self, tunnel_id: str) -> dict[str, Any]:
        async with self.http() as http:
            response = await http.get(f"/api/tunnel/status/{tunnel_id}")
        assert response.status_code == 200, response.text
        status: dict[str, Any] = response.json()
        return status

    async def rotate(self, tunnel_id: str, overlap_s: int) -> dict[str, Any]:
        async with self.http() as http:
            response = await http.post(
                f"/api/tunnel/{tunnel_id}/rotate", json={"overlap_seconds": overlap_s}
            )
        assert response.status_code == 200, response.text
        rotated: dict[str, Any] = response.json()
        return rotated

    async def revoke(self, tunnel_id: str) -> None:
        async with self.http() as http:
            response = await http.post(f"/api/tunnel/{tunnel_id}/revoke")
        assert response.status_code == 200, response.text

    async def wait_state(
        self, tunnel_id: str, state: str, *, clients: int | None = None, within_s: float = 15
    ) -> dict[str, Any]:
        deadline = time.monotonic() + within_s
        while True:
            status = await self.status(tunnel_id)
            if status["state"] == state and (clients is None or len(status["clients"]) == clients):
                return status
            assert time.monotonic() < deadline, f"tunnel not {state} after {within_s}s: {status}"
            await asyncio.sleep(0.1)

    async def online_client(self, directory: Path) -> tuple[dict[str, Any], TunnelClientProcess]:
        """A registered tunnel with one client connected to it."""
        registered = await self.register()
        client = TunnelClientProcess(self.stack, registered["token"], directory)
        try:
            await self.wait_state(registered["tunnel_id"], "online")
        except BaseException:
            client.stop()
            raise
        return registered, client


class SocketRecorder:
    """A TCP proxy between a tunnel client and the tunnel service that keeps every WebSocket
    payload that crossed it, unmasked (a client's frames are XOR-masked on the wire), so a test
    can look for plaintext exactly as a network observer without TLS would see the frames."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.to_client = bytearray()
        self._outbound: list[bytearray] = []
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        outbound = bytearray()
        self._outbound.append(outbound)

        async def pump(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, sink: bytearray
        ) -> None:
            try:
                while data := await src.read(65536):
                    sink += data
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(
            pump(reader, up_writer, outbound), pump(up_reader, writer, self.to_client)
        )

    @property
    def from_client(self) -> list[bytes]:
        """Every frame payload the client sent so far, unmasked."""
        return [p for raw in self._outbound for p in _unmasked_payloads(bytes(raw))]


def _unmasked_payloads(data: bytes) -> list[bytes]:
    """The payloads of the masked WebSocket frames after the HTTP upgrade request in `data`."""
    at = data.find(b"\r\n\r\n") + 4
    payloads: list[bytes] = []
    while at + 2 <= len(data):
        length = data[at + 1] & 0x7F
        at += 2
        if length == 126:
            length = int.from_bytes(data[at : at + 2], "big")
            at += 2
        elif length == 127:
            length = int.from_bytes(data[at : at + 8], "big")
            at += 8
        mask = data[at : at + 4]
        at += 4
        body = data[at : at + length]
        at += length
        payloads.append(bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
    return payloads
