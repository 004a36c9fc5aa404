"""`python -m bench --copies` (or `python -m bench.copies`): throughput with 1 and 2 copies of
every service.

For each number of copies it starts a fresh stack (`Stack(copies=n)`: gateway copies share the
port with SO_REUSEPORT, so the load generator's keep-alive connections spread over them), then
sends non-streamed and streamed chat completions at concurrency 16 and 32 and records requests/s
and p50/p99 latency. Writes bench/results/copies.json.

On a machine with fewer cores than processes a second copy cannot add throughput, only
scheduling: read the figures beside `machine.cpus`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import orjson
import uvloop
from pydantic import SecretStr

from bench.loadgen import run_load
from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus, connect
from byorouter_common.contracts import keystore as ks

RESULTS: Final = Path(__file__).parent / "results"
CONCURRENCY: Final = (16, 32)
COPIES: Final = (1, 2)


async def _tenant_headers(stack: Stack) -> dict[str, str]:
    """Gateway headers for a new app with one connection to the fake upstream."""
    nc = await connect(stack.nats_settings(), "bench-copies")
    try:
        bus = Bus(nc)
        app = await bus.request(ks.APP_CREATE, ks.AppCreate(name="bench copies"))
        provider = ks.ProviderCredentialInput(
            provider="openai",
            api_key=SecretStr("sk-bench-" + secrets.token_hex(12)),
            base_url=stack.upstream_base_url,
        )
        conn = await bus.request(
            ks.CONNECTION_CREATE, ks.ConnectionCreate(app_id=app.app_id, providers=[provider])
        )
    finally:
        await nc.close()
    return {
        "Authorization": f"Bearer {app.app_api_key.get_secret_value()}",
        "X-Byorouter-Connection": conn.connection_id,
    }


def _body(stream: bool) -> bytes:
    return orjson.dumps(
        {
            "model": "openai/gpt-4o-mini",
            "stream": stream,
            "messages": [{"role": "user", "content": "benchmark " * 20}],
        }
    )


async def _measure(stack: Stack, copies: int, seconds: float) -> list[dict[str, Any]]:
    headers = await _tenant_headers(stack)
    rows: list[dict[str, Any]] = []
    for stream in (False, True):
        kind = "stream" if stream else "non-stream"
        for concurrency in CONCURRENCY:
            result = await run_load(
                stack.gateway_url + "/v1/chat/completions",
                _body(stream),
                headers,
                concurrency=concurrency,
                seconds=seconds,
            )
            row = {
                "scenario": f"{kind} c={concurrency} copies={copies}",
                "copies": copies,
                "rps": round(result.rps, 1),
                "p50_ms": round(result.p50, 3),
                "p99_ms": round(result.p99, 3),
                "requests": result.requests,
                "errors": result.errors,
            }
            rows.append(row)
            print(
                f"  copies={copies} {kind:10} c={concurrency:<3} {row['rps']:>8} req/s "
                f"p50 {row['p50_ms']:>7} ms p99 {row['p99_ms']:>7} ms errors {row['errors']}",
                flush=True,
            )
    return rows


def measure_copies(seconds: float) -> dict[str, Any]:
    """Every row for 1 and 2 copies, each on a stack of its own; writes copies.json."""
    rows: list[dict[str, Any]] = []
    env = {
        "BYOROUTER_LOG_LEVEL": "WARNING",
        "BYOROUTER_RATE_LIMIT_RPS": "0",
        # One connection is driven far past a user's default limit.
        "BYOROUTER_CONNECTION_RATE_LIMIT_RPS": "0",
    }
    for copies in COPIES:
        state = Path(tempfile.mkdtemp(prefix=f"byorouter-bench-copies{copies}-"))
        stack = Stack(state, env_overrides=env, echo=False, copies=copies)
        print(f"starting a stack with {copies} copies of every service in {state} ...", flush=True)
        with stack:
            rows += uvloop.run(_measure(stack, copies, seconds))
    report: dict[str, Any] = {
        "rows": rows,
        "machine": {
            "cpus": os.cpu_count(),
            # Other work on the machine while it ran: read the figures beside it.
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "copies.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    measure_copies(parser.parse_args().seconds)


if __name__ == "__main__":
    main()
