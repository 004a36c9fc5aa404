"""`make bench`: the gateway -> router -> upstream path under load, beside the upstream alone.

Starts the whole stack (real NATS, PostgreSQL and the five services) with a fake OpenAI upstream,
then runs its scenarios (`--scenario` picks some; all by default) and prints a table; a full run
writes bench/results/latest.json, a partial one bench/results/<scenarios>.json.

- non-stream, stream: chat completions (streamed: 20 chunks) at concurrency 1 and 16,
  requests/s and p50/p99 latency straight to the upstream and through BYORouter.
- fallback: non-streamed requests to a connection whose first provider answers every request
  with 429 (no Retry-After) and whose second (a self-hosted server, with a preferred model)
  answers: the router falls back at once and cools the first down, so later requests skip it
  (decision 0026). Its rows say how much that adds to the normal path's p50 (when non-stream
  ran too).
- paced (`bench/paced.py`): 200 concurrent streams at 50 tokens/s, direct and through BYORouter:
  tokens/s as a share of direct, time to first token p50/p99 and what BYORouter adds to it.
- tunnel (`bench/tunnel.py`): the same fake server by its direct URL and through a tunnel
  client: added time to first token and between chunks, 200 concurrent paced streams, and the
  time back after a tunnel service restart.

Every BYORouter row has the CPU milliseconds each of the five services spent per request
(process user + system CPU over the run / requests): on a shared machine steadier than req/s.
Memory: each service's RSS, PSS and USS at idle (5 s after start, before any load; the sums
are the issue's memory floor, PSS being what the five take together) and its RSS after the run.
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

from bench.copies import measure_copies
from bench.loadgen import LoadResult, run_load
from bench.paced import PACE_MS, STREAMS, paced_body, run_paced
from bench.tunnel import measure_tunnel
from byorouter_cli.dev.stack import Stack
from byorouter_common.bus import Bus, connect
from byorouter_common.contracts import keystore as ks

RESULTS = Path(__file__).parent / "results"
SCENARIOS = ("non-stream", "stream", "fallback", "paced", "tunnel")
SERVICE_NAMES = ("gateway", "router", "keystore", "connect", "tunnel")


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


class CpuMeter:
    """CPU time each service process used between `start()` and `per_request(n)`."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._before: dict[str, float] = {}

    def _used(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for name, pid in self._stack.service_pids().items():
            times = psutil.Process(pid).cpu_times()
            # Copies (router-2, ...) count towards their service.
            service = name.split("-")[0]
            used[service] = used.get(service, 0.0) + times.user + times.system
        return used

    def start(self) -> None:
        self._before = self._used()

    def per_request(self, requests: int) -> dict[str, float]:
        """Milliseconds of CPU per request, for every service."""
        after = self._used()
        return {
            name: round(
                (after.get(name, 0.0) - self._before.get(name, 0.0)) / max(requests, 1) * 1e3, 3
            )
            for name in SERVICE_NAMES
        }


def _cpu_text(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:.3f}" for name, ms in cpu.items())


async def _measure_chat(
    stack: Stack, seconds: float, stream: bool, headers: dict[str, str]
) -> list[dict[str, Any]]:
    kind = "stream" if stream else "non-stream"
    upstream_headers = {"Authorization": "Bearer sk-bench-direct"}
    meter = CpuMeter(stack)
    rows: list[dict[str, Any]] = []
    for concurrency in (1, 16):
        direct = await run_load(
            stack.upstream_base_url + "/chat/completions",
            _body("gpt-4o-mini", stream),
            upstream_headers,
            concurrency=concurrency,
            seconds=seconds,
        )
        meter.start()
        through = await run_load(
            stack.gateway_url + "/v1/chat/completions",
            _body("openai/gpt-4o-mini", stream),
            headers,
            concurrency=concurrency,
            seconds=seconds,
        )
        d, g = (
            _row(f"{kind} c={concurrency} direct", direct),
            _row(f"{kind} c={concurrency} byorouter", through),
        )
        g["added_p50_ms"] = round(through.p50 - direct.p50, 3)
        g["cpu_ms_per_request"] = meter.per_request(through.requests)
        rows += [d, g]
        print(
            f"  {kind:10} c={concurrency:<3} direct {d['rps']:>8} req/s p50 "
            f"{d['p50_ms']:>7} ms | byorouter {g['rps']:>8} req/s p50 {g['p50_ms']:>7} ms "
            f"p99 {g['p99_ms']:>7} ms (+{g['added_p50_ms']} ms p50, errors {g['errors']})\n"
            f"  {'':10} CPU ms/request: {_cpu_text(g['cpu_ms_per_request'])}",
            flush=True,
        )
    return rows


async def _measure_paced(
    stack: Stack, seconds: float, headers: dict[str, str]
) -> list[dict[str, Any]]:
    """200 paced streams straight to the fake, then the same through BYORouter."""
    model = f"drip-{PACE_MS}"
    # At least a few streams per connection: each lasts about half a second.
    seconds = max(seconds, 3.0)
    direct = await run_paced(
        stack.upstream_base_url + "/chat/completions",
        paced_body(model),
        {"Authorization": "Bearer sk-bench-direct"},
        seconds=seconds,
    )
    meter = CpuMeter(stack)
    meter.start()
    through = await run_paced(
        stack.gateway_url + "/v1/chat/completions",
        paced_body("openai/" + model),
        headers,
        seconds=seconds,
    )
    row: dict[str, Any] = {
        "scenario": f"paced {STREAMS} streams (50 tokens/s each)",
        "direct_tokens_per_s": round(direct.tokens_per_s, 1),
        "byorouter_tokens_per_s": round(through.tokens_per_s, 1),
        "byorouter_share_of_direct": round(through.tokens_per_s / max(direct.tokens_per_s, 1), 3),
        "direct_ttft_p50_ms": round(direct.ttft(50), 2),
        "direct_ttft_p99_ms": round(direct.ttft(99), 2),
        "byorouter_ttft_p50_ms": round(through.ttft(50), 2),
        "byorouter_ttft_p99_ms": round(through.ttft(99), 2),
        "added_ttft_p50_ms": round(through.ttft(50) - direct.ttft(50), 2),
        "streams": through.streams,
        "errors": direct.errors + through.errors,
        "cpu_ms_per_request": meter.per_request(through.streams),
    }
    print(
        f"  {'paced':10} {STREAMS} streams at 50 tokens/s: direct "
        f"{row['direct_tokens_per_s']:.0f} tokens/s, byorouter {row['byorouter_tokens_per_s']:.0f}"
        f" tokens/s ({row['byorouter_share_of_direct']:.0%} of direct); TTFT p50/p99 direct "
        f"{row['direct_ttft_p50_ms']}/{row['direct_ttft_p99_ms']} ms, byorouter "
        f"{row['byorouter_ttft_p50_ms']}/{row['byorouter_ttft_p99_ms']} ms "
        f"(+{row['added_ttft_p50_ms']} ms p50, errors {row['errors']})\n"
        f"  {'':10} CPU ms/stream: {_cpu_text(row['cpu_ms_per_request'])}",
        flush=True,
    )
    return [row]


async def _measure(
    stack: Stack, seconds: float, state: Path, scenarios: list[str]
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    headers = _gateway_headers(*await _tenant(stack)) if set(scenarios) - {"tunnel"} else {}
    for stream in (False, True):
        if ("stream" if stream else "non-stream") in scenarios:
            rows += await _measure_chat(stack, seconds, stream, headers)
    if "fallback" in scenarios:
        rows += await _measure_fallback(stack, seconds, rows)
    if "paced" in scenarios:
        rows += await _measure_paced(stack, seconds, headers)
    if "tunnel" in scenarios:
        rows += await measure_tunnel(stack, state)
    return {"rows": rows, "rss_mib": _memory(stack)}


def _memory(stack: Stack) -> dict[str, float]:
    return {
        name: round(psutil.Process(pid).memory_info().rss / 2**20, 1)
        for name, pid in stack.service_pids().items()
    }


def _idle_memory(stack: Stack) -> dict[str, Any]:
    """Each service's memory at idle, in MiB, three ways, with the five summed.

    RSS counts every page a process has in memory, so pages the processes share (the
    interpreter, extension modules' code) are counted once per process in the sum. PSS divides
    each shared page among the processes sharing it, so the sum of PSS is what the five take
    together; USS is what each holds alone.
    """
    per: dict[str, dict[str, float]] = {}
    for name, pid in stack.service_pids().items():
        info = psutil.Process(pid).memory_full_info()
        per[name] = {kind: round(getattr(info, kind) / 2**20, 1) for kind in ("rss", "pss", "uss")}
    total = {kind: round(sum(v[kind] for v in per.values()), 1) for kind in ("rss", "pss", "uss")}
    return {"services": per, "total": total}


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
        baseline = normal.get(f"non-stream c={concurrency} byorouter")
        added = ""
        if baseline is not None:
            row["added_p50_ms"] = round(result.p50 - baseline["p50_ms"], 3)
            added = f" (+{row['added_p50_ms']} ms p50 over the normal path)"
        measured.append(row)
        print(
            f"  {'fallback':10} c={concurrency:<3} first provider 429, second serves: "
            f"{row['rps']:>8} req/s p50 {row['p50_ms']:>7} ms p99 {row['p99_ms']:>7} ms"
            f"{added}, errors {row['errors']}",
            flush=True,
        )
    return measured


def _table(rows: list[dict[str, Any]]) -> str:
    """The BYORouter rows as one table: latency, what it added, CPU per request per service."""
    head = f"{'scenario':44} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'added':>8}  " + " ".join(
        f"{name:>8}" for name in SERVICE_NAMES
    )
    lines = [head, f"{'':44} {'':>9} {'':>8} {'':>8} {'p50 ms':>8}  CPU ms per request", ""]
    for row in rows:
        cpu = row.get("cpu_ms_per_request")
        if cpu is None:
            continue
        if "rps" in row:
            figures = f"{row['rps']:>9} {row['p50_ms']:>8} {row['p99_ms']:>8}"
            added = row.get("added_p50_ms", "")
        else:  # paced: tokens/s and time to first token
            figures = (
                f"{row['byorouter_tokens_per_s']:>9} {row['byorouter_ttft_p50_ms']:>8} "
                f"{row['byorouter_ttft_p99_ms']:>8}"
            )
            added = row["added_ttft_p50_ms"]
        lines.append(
            f"{row['scenario']:44} {figures} {added!s:>8}  "
            + " ".join(f"{cpu[name]:>8.3f}" for name in SERVICE_NAMES)
        )
    lines.append("(paced: tokens/s and time to first token p50/p99; its CPU is per stream)")
    return "\n".join(lines)


def _scenarios(chosen: list[str] | None, tunnel_only: bool) -> list[str]:
    if tunnel_only:
        return ["tunnel"]
    if not chosen:
        return list(SCENARIOS)
    picked = [name.strip() for value in chosen for name in value.split(",") if name.strip()]
    unknown = sorted(set(picked) - set(SCENARIOS))
    if unknown:
        raise SystemExit(f"unknown scenario {', '.join(unknown)}; choose from {SCENARIOS}")
    return [name for name in SCENARIOS if name in picked]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help=f"run only this scenario (repeat, or comma-separate): {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--tunnel-only", action="store_true", help="same as --scenario tunnel")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="the services' log level (INFO writes an access line per request, as by default)",
    )
    parser.add_argument(
        "--copies",
        action="store_true",
        help="only throughput with 1 and 2 copies of every service (bench/copies.py)",
    )
    args = parser.parse_args()
    if args.copies:
        measure_copies(args.seconds)
        return
    scenarios = _scenarios(args.scenario, args.tunnel_only)
    state = Path(tempfile.mkdtemp(prefix="byorouter-bench-"))
    env = {
        "BYOROUTER_LOG_LEVEL": args.log_level.upper(),
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
        time.sleep(5.0)  # let start-up settle: the idle figures are the memory floor
        idle = _idle_memory(stack)
        report = uvloop.run(_measure(stack, args.seconds, state, scenarios))
        report["idle_memory_mib"] = idle
    finally:
        stack.stop()
    report["scenarios"] = scenarios
    report["machine"] = {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print()
    print(_table(report["rows"]))
    print("resident memory (MiB): " + ", ".join(f"{k} {v}" for k, v in report["rss_mib"].items()))
    total = idle["total"]
    print(
        f"at idle (MiB, the five services summed): RSS {total['rss']}, PSS {total['pss']} "
        f"(shared pages counted once), USS {total['uss']}"
    )
    RESULTS.mkdir(exist_ok=True)
    full = scenarios == list(SCENARIOS)
    out = RESULTS / ("latest.json" if full else "-".join(scenarios) + ".json")
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
