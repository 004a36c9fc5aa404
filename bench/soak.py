"""`make soak`: the stack under steady moderate load for a long time, watched for leaks.

Starts the whole stack (as `make bench` does, with the fake OpenAI upstream) on a NATS server of
its own with monitoring on a loopback port, then keeps 8 clients sending chat completions
through the gateway, streamed and non-streamed in turn, for `--minutes` (20 by default). Per
service it samples resident memory, open file descriptors, NATS subscriptions (`/connz`) and
PostgreSQL connections (`pg_stat_activity`, all of them keystore's), with the load
paused for a moment so requests in flight do not count. The baseline is the sample after the
warm-up (a minute by default): import-time and first-use growth is not a leak. Prints a table,
writes bench/results/soak-latest.json, and exits 1 when any figure grew more than 10 % or any
request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import orjson
import psutil
import psycopg
from sqlalchemy.engine import make_url

from byorouter_cli.backends import free_port, nats_server_binary, wait_for_port
from byorouter_cli.dev.stack import Stack

RESULTS: Final = Path(__file__).parent / "results"
CONCURRENCY: Final = 8
# Growth past this fraction of the baseline fails the soak.
ALLOWED_GROWTH: Final = 0.10
# Small counts move by one for reasons that are no leak (a pooled connection opened late).
ALLOWED_COUNT_SLACK: Final = 1
FIGURES: Final = ("rss_mib", "fds", "nats_subs", "db_conns")


@contextlib.contextmanager
def monitored_nats(state: Path) -> Iterator[tuple[str, str]]:
    """A nats-server with JetStream and its monitoring endpoint, both on loopback."""
    port, monitor = free_port(), free_port()
    store = state / "nats-js"
    store.mkdir(parents=True)
    args = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor)]
    args += ["-js", "-sd", str(store)]
    with (state / "nats.log").open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port)
        wait_for_port("127.0.0.1", monitor)
        yield f"nats://127.0.0.1:{port}", f"http://127.0.0.1:{monitor}"
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class Load:
    """8 clients sending back to back; `paused` holds them between requests for a sample."""

    url: str
    headers: dict[str, str]
    model: str
    requests: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    running: asyncio.Event = field(default_factory=asyncio.Event)
    idle: int = 0
    stopped: bool = False

    async def client(self, number: int) -> None:
        bodies = {stream: self._body(stream) for stream in (False, True)}
        # Half the clients start streamed, half not, and each alternates.
        turns = (number % 2 == 0, number % 2 == 1)
        async with httpx.AsyncClient(headers=self.headers, timeout=30) as http:
            for stream in itertools.cycle(turns):
                if not self.running.is_set():
                    self.idle += 1
                    await self.running.wait()
                    self.idle -= 1
                if self.stopped:
                    return
                await self._one(http, bodies[stream], stream)

    async def _one(self, http: httpx.AsyncClient, body: bytes, stream: bool) -> None:
        try:
            async with http.stream("POST", self.url, content=body) as response:
                text = (await response.aread()).decode()
            ok = response.status_code == 200 and (not stream or text.endswith("data: [DONE]\n\n"))
        except httpx.HTTPError as exc:
            ok, text = False, type(exc).__name__
        self.requests += 1
        if not ok:
            self.errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(text[:300])

    def _body(self, stream: bool) -> bytes:
        return orjson.dumps(
            {
                "model": self.model,
                "stream": stream,
                "messages": [{"role": "user", "content": "soak " * 20}],
            }
        )


def _sockets_of(pid: int) -> set[int]:
    """Local TCP ports of `pid` and its children (a service may fork workers)."""
    ports: set[int] = set()
    process = psutil.Process(pid)
    for each in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            ports.update(c.laddr.port for c in each.net_connections("tcp") if c.laddr)
    return ports


def _fds_of(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.num_fds() for p in [process, *process.children(recursive=True)])


async def sample(stack: Stack, monitor_url: str) -> dict[str, dict[str, float]]:
    """Per service: RSS (MiB), open fds, NATS subscriptions, PostgreSQL connections."""
    pids = stack.service_pids()
    async with httpx.AsyncClient(timeout=10) as http:
        connz = (
            await http.get(monitor_url + "/connz", params={"subs": "1", "limit": "1024"})
        ).json()
    # A connection is the service's whose process holds its local port.
    subs_by_port = {
        int(conn["port"]): int(conn.get("subscriptions", 0))
        for conn in connz.get("connections", [])
    }
    url = make_url(stack.database_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False)) as db:
        row = db.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()
    # Keystore is the only service with a database (the others ask it over NATS); the server
    # is on a unix socket, so its connections are counted, not matched to a process.
    db_conns = int(row[0]) if row else 0
    figures: dict[str, dict[str, float]] = {}
    for name, pid in sorted(pids.items()):
        ports = _sockets_of(pid)
        figures[name] = {
            "rss_mib": round(psutil.Process(pid).memory_info().rss / 2**20, 1),
            "fds": _fds_of(pid),
            "nats_subs": sum(n for port, n in subs_by_port.items() if port in ports),
            "db_conns": db_conns if name.startswith("keystore") else 0,
        }
    return figures


async def quiet_sample(load: Load, stack: Stack, monitor_url: str) -> dict[str, dict[str, float]]:
    """A sample with the clients held between requests, so nothing in flight is counted."""
    load.running.clear()
    deadline = time.monotonic() + 30
    while load.idle < CONCURRENCY and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    # Let the services finish what the last requests started (usage reports, pooled sockets).
    await asyncio.sleep(1.0)
    try:
        return await sample(stack, monitor_url)
    finally:
        load.running.set()


def grown(baseline: dict[str, dict[str, float]], end: dict[str, dict[str, float]]) -> list[str]:
    """Every figure that grew past the allowance, as a sentence."""
    found: list[str] = []
    for name, before in baseline.items():
        after = end.get(name)
        if after is None:
            found.append(f"{name} is no longer running")
            continue
        for figure in FIGURES:
            limit = before[figure] * (1 + ALLOWED_GROWTH)
            if figure != "rss_mib":
                limit = max(limit, before[figure] + ALLOWED_COUNT_SLACK)
            if after[figure] > limit:
                found.append(f"{name} {figure} {before[figure]:g} -> {after[figure]:g}")
    return found


def table(samples: dict[str, dict[str, dict[str, float]]]) -> str:
    names = sorted(samples["end"])
    header = f"{'service':<10}" + "".join(
        f"{figure + ' ' + when:>22}" for figure in FIGURES for when in ("base", "end")
    )
    lines = [header]
    for name in names:
        row = f"{name:<10}"
        for figure in FIGURES:
            for when in ("baseline", "end"):
                value = samples[when].get(name, {}).get(figure, float("nan"))
                row += f"{value:>22g}"
        lines.append(row)
    return "\n".join(lines)


async def soak(stack: Stack, monitor_url: str, minutes: float, warmup_s: float) -> dict[str, Any]:
    demo = stack.create_demo()
    load = Load(
        url=stack.gateway_url + "/v1/chat/completions",
        headers={
            "Authorization": f"Bearer {demo['app_api_key']}",
            "X-Byorouter-Connection": demo["connection_id"],
        },
        model=demo["model"],
    )
    samples = {"start": await sample(stack, monitor_url)}
    started = time.monotonic()
    until = started + warmup_s + minutes * 60
    load.running.set()
    clients = [asyncio.create_task(load.client(i)) for i in range(CONCURRENCY)]
    await asyncio.sleep(warmup_s)
    samples["baseline"] = await quiet_sample(load, stack, monitor_url)
    served_at_baseline = load.requests
    print(f"baseline after {warmup_s:g} s warm-up ({load.requests} requests)", flush=True)
    while time.monotonic() < until - 1:
        await asyncio.sleep(min(60.0, max(0.0, until - time.monotonic() - 1)))
        elapsed = (time.monotonic() - started) / 60
        print(
            f"  {elapsed:5.1f} min: {load.requests} requests, {load.errors} errors",
            flush=True,
        )
    # Sampled like the baseline: clients held between requests, their connections still open.
    samples["end"] = await quiet_sample(load, stack, monitor_url)
    load.stopped = True
    load.running.set()
    await asyncio.gather(*clients)
    seconds = time.monotonic() - started
    return {
        "minutes": minutes,
        "warmup_s": warmup_s,
        "concurrency": CONCURRENCY,
        "requests": load.requests,
        "requests_after_baseline": load.requests - served_at_baseline,
        "errors": load.errors,
        "error_samples": load.error_samples,
        "rps": round(load.requests / seconds, 1),
        "samples": samples,
        "grown": grown(samples["baseline"], samples["end"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=20.0, help="measured minutes of load")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="load before the baseline")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="byorouter-soak-"))
    env = {
        "BYOROUTER_LOG_LEVEL": "WARNING",
        "BYOROUTER_RATE_LIMIT_RPS": "0",
        "BYOROUTER_CONNECTION_RATE_LIMIT_RPS": "0",
    }
    print(f"starting the stack in {state} ...", flush=True)
    with monitored_nats(state) as (nats_url, monitor_url):
        stack = Stack(state / ".byorouter", nats_url=nats_url, env_overrides=env, echo=False)
        stack.start()
        try:
            report = asyncio.run(soak(stack, monitor_url, args.minutes, args.warmup_s))
        finally:
            stack.stop()
    report["machine"] = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(table(report["samples"]))
    print(
        f"requests {report['requests']} ({report['rps']} req/s), errors {report['errors']}",
        flush=True,
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "soak-latest.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out}")
    failed = [
        *report["grown"],
        *([f"{report['errors']} requests failed"] if report["errors"] else []),
    ]
    if failed:
        print("SOAK FAILED: " + "; ".join(failed), file=sys.stderr)
        sys.exit(1)
    print("soak passed: nothing grew more than 10 % after the warm-up, no request failed")


if __name__ == "__main__":
    main()
