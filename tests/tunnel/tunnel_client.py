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

    def __init__(self, stack: Stack, token: str, directory: Path, name: str = "client") -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BYOROUTER_")}
        env["BYOROUTER_TUNNEL_TOKEN"] = token
        self.log = directory / f"{name}.log"
        self._log = open(self.log, "ab")  # noqa: SIM115 - closed in stop
        self.argv = [
            _CLIENT,
            "--url",
            ws_url(stack),
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
