"""`make bench`: the gateway -> router -> upstream path under load, beside the upstream alone.

Starts the whole stack (real NATS, PostgreSQL and the five services) with a fake OpenAI upstream,
then for non-streamed and streamed (20 chunks) chat completions at concurrency 1 and 16 measures
requests/s and p50/p99 latency straight to the upstream and through BYORouter, and finally the
resident memory of each service. Prints a table and writes bench/results/latest.json.

The fallback scenario sends non-streamed requests to a connection whose first provider answers
every request with 429 (no Retry-After) and whose second (a self-hosted server, with a preferred
model) answers: the router retries the first once after its backoff, then falls back. Its rows
say how much that adds to the normal path's p50.

The tunnel scenario (`bench/tunnel.py`) reaches the same fake server by its direct URL and
through a tunnel client: added time to first token and between chunks, 200 concurrent paced
streams, and the time back after a tunnel service restart. `--tunnel-only` runs just that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import uvloop
from pydantic import SecretStr

from bench.loadgen import LoadResult, run_load
from bench.tunnel import measure_tunnel
from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus, connect
from byorouter_common.contracts import keystore as ks

RESULTS = Path(__file__).parent / "results"


async def _tenant(stack: Stack, *, with_fallback: bool = False) -> tuple[str, str]:
    """An app key and a connection to the fake upstream; with a self-hosted fallback if asked."""
    providers = [
        ks.ProviderCredentialInput(
            provider="openai",
            api_key=SecretStr("sk-bench-" + secrets.token_hex(12)),
            base_url=stack.upstream_base_url,
        )
    ]
    if with_fallback:
        providers.append(
            ks.ProviderCredentialInput(
                provider="selfhosted",
                base_url=stack.upstream_base_url,
                preferred_model="gpt-4o-mini",
            )
        )
    nc = await connect(stack.nats_settings(), "bench")
    bus = Bus(nc)
    app = await bus.request(ks.APP_CREATE, ks.AppCreate(name="bench"))
    conn = await bus.request(
        ks.CONNECTION_CREATE, ks.ConnectionCreate(app_id=app.app_id, providers=providers)
    )
    await nc.close()
    return app.app_api_key.get_secret_value(), conn.connection_id


def _gateway_headers(app_key: str, connection_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {app_key}", "X-Byorouter-Connection": connection_id}


def _body(model: str, stream: bool) -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "stream": stream,
            "messages": [{"role": "user", "content": "benchmark " * 20}],
        }
    )


def _row(name: str, result: LoadResult) -> dict[str, Any]:
    return {
        "scenario": name,
        "rps": round(result.rps, 1),
        "p50_ms": round(result.p50, 3),
        "p99_ms": round(result.p99, 3),
        "requests": result.requests,
        "errors": result.errors,
    }


async def _measure(
    stack: Stack, seconds: float, state: Path, *, tunnel_only: bool = False
) -> dict[str, Any]:
    if tunnel_only:
        return {"rows": await measure_tunnel(stack, state), "rss_mib": _memory(stack)}
    gateway_headers = _gateway_headers(*await _tenant(stack))
    upstream_headers = {"Authorization": "Bearer sk-bench-direct"}
    rows: list[dict[str, Any]] = []
    for stream in (False, True):
        kind = "stream" if stream else "non-stream"
        for concurrency in (1, 16):
            direct = await run_load(
                stack.upstream_base_url + "/chat/completions",
                _body("gpt-4o-mini", stream),
                upstream_headers,
                concurrency=concurrency,
                seconds=seconds,
            )
            cpu_before = _service_cpu_s(stack)
            through = await run_load(
                stack.gateway_url + "/v1/chat/completions",
                _body("openai/gpt-4o-mini", stream),
                gateway_headers,
                concurrency=concurrency,
                seconds=seconds,
            )
            cpu = _service_cpu_s(stack)
            d, g = (
                _row(f"{kind} c={concurrency} direct", direct),
                _row(f"{kind} c={concurrency} byorouter", through),
            )
            g["added_p50_ms"] = round(through.p50 - direct.p50, 3)
            # CPU time the services spent per request: steadier than req/s on a shared machine.
            g["cpu_us_per_request"] = {
                name: round((cpu[name] - cpu_before[name]) / max(through.requests, 1) * 1e6)
                for name in ("gateway", "router", "keystore")
            }
            rows += [d, g]
            print(
                f"  {kind:10} c={concurrency:<3} direct {d['rps']:>8} req/s p50 "
                f"{d['p50_ms']:>7} ms | byorouter {g['rps']:>8} req/s p50 {g['p50_ms']:>7} ms "
                f"p99 {g['p99_ms']:>7} ms (+{g['added_p50_ms']} ms p50, errors {g['errors']}) "
                f"CPU/request gateway {g['cpu_us_per_request']['gateway']} us, router "
                f"{g['cpu_us_per_request']['router']} us",
                flush=True,
            )
    rows += await _measure_fallback(stack, seconds, rows)
    rows += await measure_tunnel(stack, state)
    return {"rows": rows, "rss_mib": _memory(stack)}


def _service_cpu_s(stack: Stack) -> dict[str, float]:
    """User plus system CPU seconds each service process has used so far."""
    used: dict[str, float] = {}
    for name, pid in stack.service_pids().items():
        times = psutil.Process(pid).cpu_times()
        used[name] = times.user + times.system
    return used


def _memory(stack: Stack) -> dict[str, float]:
    return {
        name: round(psutil.Process(pid).memory_info().rss / 2**20, 1)
        for name, pid in stack.service_pids().items()
    }


async def _measure_fallback(
    stack: Stack, seconds: float, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Non-streamed requests whose first provider answers 429 and second serves, beside normal."""
    headers = _gateway_headers(*await _tenant(stack, with_fallback=True))
    normal = {row["scenario"]: row for row in rows}
    measured: list[dict[str, Any]] = []
    for concurrency in (1, 16):
        result = await run_load(
            stack.gateway_url + "/v1/chat/completions",
            # busy-429: the fake's 429 without Retry-After, so the retry waits only our backoff.
            _body("openai/busy-429", False),
            headers,
            concurrency=concurrency,
            seconds=seconds,
        )
        row = _row(f"non-stream c={concurrency} fallback after 429", result)
        baseline = normal[f"non-stream c={concurrency} byorouter"]
        row["added_p50_ms"] = round(result.p50 - baseline["p50_ms"], 3)
        measured.append(row)
        print(
            f"  {'fallback':10} c={concurrency:<3} first provider 429, second serves: "
            f"{row['rps']:>8} req/s p50 {row['p50_ms']:>7} ms p99 {row['p99_ms']:>7} ms "
            f"(+{row['added_p50_ms']} ms p50 over the normal path, errors {row['errors']})",
            flush=True,
        )
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--tunnel-only", action="store_true", help="only the tunnel scenario")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="byorouter-bench-"))
    env = {
        "BYOROUTER_LOG_LEVEL": "WARNING",
        "BYOROUTER_RATE_LIMIT_RPS": "0",
        # Every scenario drives one connection far past a user's default 20 a second.
        "BYOROUTER_CONNECTION_RATE_LIMIT_RPS": "0",
    }
    # One tunnel client carries the 200 concurrent streams of the tunnel scenario.
    service_env = {"tunnel": {"BYOROUTER_MAX_CONCURRENCY": "256"}}
    stack = Stack(state, env_overrides=env, service_env=service_env, echo=False)
    print(f"starting the stack in {state} ...", flush=True)
    stack.start()
    try:
        report = uvloop.run(_measure(stack, args.seconds, state, tunnel_only=args.tunnel_only))
    finally:
        stack.stop()
    report["machine"] = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print("resident memory (MiB): " + ", ".join(f"{k} {v}" for k, v in report["rss_mib"].items()))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("tunnel.json" if args.tunnel_only else "latest.json")
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
