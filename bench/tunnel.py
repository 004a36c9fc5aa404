"""The tunnel scenario of `make bench`: the same fake model server reached by its direct URL and
through a tunnel (router -> NATS -> tunnel service -> WebSocket -> `byorouter-tunnel` client),
in one run, so the difference is what the tunnel adds.

- added time to first token and added gap between chunks (p50), from sequential streams whose
  server paces its events 20 ms apart;
- 200 concurrent streams paced at 50 tokens/s each, through one tunnel client, as tokens/s
  beside the same load on the direct URL;
- the time from a tunnel service restart to the first request that succeeds again.
Both routes are measured through the gateway with the same HTTP client, so only the route differs.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus, connect
from byorouter_common.contracts import keystore as ks
from byorouter_common.contracts import tunnel as tn

PACE_MS = 20  # 50 tokens/s
WORDS = 50


@dataclass
class Route:
    name: str
    headers: dict[str, str]


async def _routes(stack: Stack, state: Path) -> tuple[Route, Route, subprocess.Popen[bytes]]:
    """A direct self-hosted connection and a tunneled one (with its client running)."""
    nc = await connect(stack.nats_settings(), "bench-tunnel")
    bus = Bus(nc, timeout_s=10)
    try:
        app = await bus.request(ks.APP_CREATE, ks.AppCreate(name="bench tunnel"))
        direct = await bus.request(
            ks.CONNECTION_CREATE,
            ks.ConnectionCreate(
                app_id=app.app_id,
                providers=[
                    ks.ProviderCredentialInput(
                        provider="selfhosted", base_url=stack.upstream_base_url
                    )
                ],
            ),
        )
        tunneled = await bus.request(
            ks.CONNECTION_CREATE,
            ks.ConnectionCreate(
                app_id=app.app_id,
                providers=[
                    ks.ProviderCredentialInput(
                        provider="openai",
                        api_key=SecretStr("sk-bench-unused"),
                        base_url=stack.upstream_base_url,
                    )
                ],
            ),
        )
        registered = await bus.request(
            ks.TUNNEL_REGISTER,
            ks.TunnelRegister(app_id=app.app_id, connection_id=tunneled.connection_id),
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("BYOROUTER_")}
        env["BYOROUTER_TUNNEL_TOKEN"] = registered.token.get_secret_value()
        client = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("byorouter-tunnel")),
                "--url",
                stack.tunnel_ws_url,
                "--upstream",
                stack.upstream_base_url,
                "--key-file",
                str(state / "bench-client.key"),
                "--max-concurrency",
                "256",
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await _wait_online(nc, registered.tunnel_id)
    finally:
        await nc.close()
    key = app.app_api_key.get_secret_value()

    def headers(connection_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}", "X-Byorouter-Connection": connection_id}

    return (
        Route("direct URL", headers(direct.connection_id)),
        Route("tunnel", headers(tunneled.connection_id)),
        client,
    )


async def _wait_online(nc: Any, tunnel_id: str, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            await nc.request(tn.status_subject(tunnel_id), b"{}", timeout=0.5)
            return
        except Exception:  # no responders yet, or a timeout: not online yet
            await asyncio.sleep(0.1)
    raise RuntimeError("the bench tunnel client did not come online")


def _body(words: int, pace_ms: int) -> bytes:
    content = " ".join(f"w{i}" for i in range(words))
    return orjson.dumps(
        {
            "model": f"selfhosted/drip-{pace_ms}",
            "stream": True,
            "messages": [{"role": "user", "content": content}],
        }
    )


async def _timed_stream(
    http: httpx.AsyncClient, url: str, route: Route, body: bytes
) -> tuple[float, list[float], int]:
    """Time to the first content event, the gaps between content events, and their count."""
    started = time.perf_counter()
    first = 0.0
    last = 0.0
    gaps: list[float] = []
    count = 0
    async with http.stream("POST", url, content=body, headers=route.headers) as response:
        assert response.status_code == 200, response.status_code
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            now = time.perf_counter()
            if count == 0:
                first = now - started
            else:
                gaps.append(now - last)
            last = now
            count += 1
    return first, gaps, count


async def _latency(stack: Stack, route: Route, runs: int) -> tuple[float, float]:
    url = stack.gateway_url + "/v1/chat/completions"
    body = _body(10, PACE_MS)
    firsts: list[float] = []
    gaps: list[float] = []
    async with httpx.AsyncClient(timeout=60) as http:
        await _timed_stream(http, url, route, body)  # warm the connection and the caches
        for _ in range(runs):
            first, between, _ = await _timed_stream(http, url, route, body)
            firsts.append(first)
            gaps += between
    return statistics.median(firsts) * 1000, statistics.median(gaps) * 1000


async def _throughput(stack: Stack, route: Route, streams: int) -> tuple[float, int]:
    """Tokens per second over `streams` concurrent paced streams, and how many failed."""
    url = stack.gateway_url + "/v1/chat/completions"
    body = _body(WORDS, PACE_MS)
    limits = httpx.Limits(max_connections=streams + 8, max_keepalive_connections=streams + 8)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(_timed_stream(http, url, route, body) for _ in range(streams)),
            return_exceptions=True,
        )
        took = time.perf_counter() - started
    tokens = sum(r[2] for r in results if not isinstance(r, BaseException))
    failed = sum(1 for r in results if isinstance(r, BaseException))
    return tokens / took, failed


async def _restart(stack: Stack, route: Route) -> float:
    """Seconds from the tunnel service's restart to the first request that succeeds again."""
    url = stack.gateway_url + "/v1/chat/completions"
    body = orjson.dumps(
        {"model": "selfhosted/gpt-4o-mini", "messages": [{"role": "user", "content": "back?"}]}
    )
    await asyncio.to_thread(stack.stop_service, "tunnel")
    restarted = time.perf_counter()
    await asyncio.to_thread(stack.start_service, "tunnel")
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            response = await http.post(url, content=body, headers=route.headers)
            if response.status_code == 200:
                return time.perf_counter() - restarted
            await asyncio.sleep(0.05)


async def measure_tunnel(stack: Stack, state: Path, runs: int = 40) -> list[dict[str, Any]]:
    direct, tunnel, client = await _routes(stack, state)
    try:
        rows: list[dict[str, Any]] = []
        d_first, d_gap = await _latency(stack, direct, runs)
        t_first, t_gap = await _latency(stack, tunnel, runs)
        rows.append(
            {
                "scenario": "tunnel latency (paced 20 ms)",
                "direct_ttft_p50_ms": round(d_first, 2),
                "tunnel_ttft_p50_ms": round(t_first, 2),
                "added_ttft_p50_ms": round(t_first - d_first, 2),
                "direct_gap_p50_ms": round(d_gap, 2),
                "tunnel_gap_p50_ms": round(t_gap, 2),
                "added_gap_p50_ms": round(t_gap - d_gap, 2),
            }
        )
        print(
            f"  tunnel     TTFT p50 direct {d_first:.2f} ms, tunnel {t_first:.2f} ms "
            f"(+{t_first - d_first:.2f} ms); inter-chunk p50 direct {d_gap:.2f} ms, tunnel "
            f"{t_gap:.2f} ms (+{t_gap - d_gap:.2f} ms)",
            flush=True,
        )
        d_rate, d_failed = await _throughput(stack, direct, 200)
        t_rate, t_failed = await _throughput(stack, tunnel, 200)
        rows.append(
            {
                "scenario": "tunnel 200 paced streams (50 tokens/s each)",
                "direct_tokens_per_s": round(d_rate, 1),
                "tunnel_tokens_per_s": round(t_rate, 1),
                "tunnel_share_of_direct": round(t_rate / d_rate, 3),
                "errors": d_failed + t_failed,
            }
        )
        print(
            f"  tunnel     200 paced streams: direct {d_rate:.0f} tokens/s, tunnel "
            f"{t_rate:.0f} tokens/s ({t_rate / d_rate:.0%} of direct, errors "
            f"{d_failed + t_failed})",
            flush=True,
        )
        back = await _restart(stack, tunnel)
        rows.append(
            {"scenario": "tunnel service restart to first success", "seconds": round(back, 2)}
        )
        print(f"  tunnel     service restart to the first successful request: {back:.2f} s")
        return rows
    finally:
        client.kill()
        client.wait(10)
